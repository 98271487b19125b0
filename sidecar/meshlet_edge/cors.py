"""CORS (the Fetch standard's protocol) for browsers on other origins, from ``edge.cors``:

- a preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here, before auth and
  without an upstream call: 204 with ``Access-Control-Allow-Origin`` (the origin echoed), ``-Allow-Methods``,
  ``-Allow-Headers``, ``-Max-Age`` (and ``-Allow-Credentials``), or, for an origin, a method or a header that is not
  allowed, a 403 in the edge's error shape and no CORS headers, so the browser refuses the request;
- every other answer to an allowed origin gets ``Access-Control-Allow-Origin`` (the origin, or ``*`` when
  ``allow_origins`` is ``["*"]`` without credentials), ``-Allow-Credentials`` and ``-Expose-Headers``;
- every answer carries ``Vary: Origin`` (unless the answer is the same for all origins, ``*``), so that a shared
  cache never hands one origin's answer to another.

Origins are exact (``https://shop.example.com``) or patterns whose ``*`` stands for one or more DNS labels
(``https://*.example.com`` takes ``https://a.example.com`` and ``https://a.b.example.com``, not
``https://example.com``). The decisions are pure (`CorsPolicy`); the middleware and the prepare hook apply them."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
from aiohttp import hdrs, web

from meshlet.config.schema import EdgeCors
from meshlet_edge.responses import add_vary, error_answer
from meshlet_edge.stages import Handler, HeaderHook, HttpStage
from meshlet_edge.status import refusal

_LABELS = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def origin_matcher(allowed: Iterable[str]) -> Callable[[str], bool]:
    exact = {origin.lower().rstrip("/") for origin in allowed if "*" not in origin}
    patterns = [
        re.compile(re.escape(origin.lower().rstrip("/")).replace(r"\*", _LABELS))
        for origin in allowed
        if "*" in origin and origin != "*"
    ]

    def matches(origin: str) -> bool:
        origin = origin.lower()
        return origin in exact or any(pattern.fullmatch(origin) for pattern in patterns)

    return matches


@dataclass(frozen=True)
class Preflight:
    status: int  # 204, or 403 when refused
    headers: dict[str, str]
    refusal: str = ""  # why, for the 403's message


class CorsPolicy:
    def __init__(self, config: EdgeCors, route_verbs: Iterable[str]) -> None:
        self.any_origin = "*" in config.allow_origins
        self._allowed = origin_matcher(config.allow_origins)
        verbs = set(route_verbs)
        if "GET" in verbs:
            verbs.add("HEAD")  # answered wherever GET is (meshlet_edge.routes); preflighted when it sends a credential
        self.methods = tuple(m.upper() for m in config.allow_methods) or tuple(sorted(verbs))
        self.any_header = "*" in config.allow_headers
        self.headers = frozenset(config.allow_headers)
        self.expose = ", ".join(config.expose_headers)
        self.credentials = config.allow_credentials
        self.max_age = str(int(config.max_age))

    def allows(self, origin: str) -> bool:
        return self.any_origin or self._allowed(origin)

    def _allow_origin(self, origin: str) -> str:
        return "*" if self.any_origin and not self.credentials else origin

    def preflight(self, origin: str, method: str, request_headers: str) -> Preflight:
        """The answer to a preflight from `origin` for `method` with `request_headers` (comma-separated)."""
        vary: dict[str, str] = {hdrs.VARY: PREFLIGHT_VARY}
        if not self.allows(origin):
            return Preflight(403, vary, f"origin {origin} is not allowed: see edge.cors.allow_origins")
        if method.upper() not in self.methods:
            return Preflight(403, vary, f"method {method} is not allowed: use {', '.join(self.methods)}")
        asked = [name.strip().lower() for name in request_headers.split(",") if name.strip()]
        refused = [name for name in asked if not self.any_header and name not in self.headers]
        if refused:
            return Preflight(403, vary, f"request headers not allowed: {', '.join(refused)} (edge.cors.allow_headers)")
        headers: dict[str, str] = {
            **vary,
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: self._allow_origin(origin),
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(self.methods),
            hdrs.ACCESS_CONTROL_MAX_AGE: self.max_age,
        }
        if asked:  # the names asked for; a literal "*" would not cover Authorization, nor anything with credentials
            headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ", ".join(asked)
        if self.credentials:
            headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
        return Preflight(204, headers)

    def actual(self, origin: str | None) -> dict[str, str]:
        """The CORS headers of an answer to a request from `origin` (none when it is not allowed)."""
        if origin is None or not self.allows(origin):
            return {}
        headers: dict[str, str] = {hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: self._allow_origin(origin)}
        if self.credentials:
            headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
        if self.expose:
            headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = self.expose
        return headers

    @property
    def varies(self) -> bool:
        return not (self.any_origin and not self.credentials)


def is_preflight(request: web.Request) -> bool:
    headers = request.headers
    return (
        request.method == hdrs.METH_OPTIONS and hdrs.ORIGIN in headers and hdrs.ACCESS_CONTROL_REQUEST_METHOD in headers
    )


def middleware(policy: CorsPolicy) -> HttpStage:
    """Answers preflights before any policy or route sees them."""

    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_preflight(request):
            return await handler(request)
        headers = request.headers
        found = policy.preflight(
            headers[hdrs.ORIGIN],
            headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD],
            headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, ""),
        )
        if found.status == 204:
            return web.Response(status=204, headers=found.headers)
        status = refusal(grpc.StatusCode.PERMISSION_DENIED, f"CORS preflight refused: {found.refusal}")
        return error_answer(status, 403, found.headers)

    return cors


def header_hook(policy: CorsPolicy) -> HeaderHook:
    """A header hook: the CORS headers of every answer but a preflight's, streamed ones too."""

    def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        if hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in response.headers or is_preflight(request):
            return
        response.headers.update(policy.actual(request.headers.get(hdrs.ORIGIN)))
        if policy.varies:
            add_vary(response.headers, hdrs.ORIGIN)

    return add_headers
