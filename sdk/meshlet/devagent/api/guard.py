"""What a browser on the same machine must not be able to do to the dev agent: write through a cross-site request
(a ``text/plain`` POST needs no CORS preflight), or read through DNS rebinding (a page whose host name resolves
to 127.0.0.1 sends its own name as ``Host``). Consul guards neither, but it holds ACLs; the dev agent hands out
leaf private keys to anyone who asks, so it answers only requests addressed to itself.

- ``Host`` must name the agent: the address it listens on, ``localhost`` when that is loopback, any IP literal
  when it listens on every interface (a rebinding page sends a name, never an IP), or a name given with
  ``--allow-host``. A request without ``Host`` (HTTP/1.0) is not a browser's and passes.
- A write (``POST``, ``PUT``, ``PATCH``, ``DELETE``) that carries ``Origin`` must come from the agent's own
  origin, ``http://<Host>``; one that a browser marks as cross-site or same-site (``Sec-Fetch-Site``) is refused
  too. Clients that are not browsers (py-consul, curl, meshlet) send neither header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from meshlet.devagent.api.common import Handler, text_error

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class AllowedHosts:
    """The ``Host`` names that address this agent, from the address it listens on and the extra names."""

    def __init__(self, listen_host: str, extra: Iterable[str] = ()) -> None:
        listen = _normalise(listen_host)
        self.any_ip = listen in WILDCARDS
        names = {listen, *(_normalise(name) for name in extra)}
        if self.any_ip or _is_loopback_ip(listen):
            names.add("localhost")
        if listen == "localhost":
            names |= LOOPBACK_NAMES
        self.names = frozenset(names - WILDCARDS)

    def admits(self, host_header: str) -> bool:
        host = _normalise(_without_port(host_header))
        if host in self.names:
            return True
        return self.any_ip and _is_ip(host)

    def __repr__(self) -> str:
        extra = " and any IP literal" if self.any_ip else ""
        return f"<AllowedHosts {', '.join(sorted(self.names))}{extra}>"


def guard(allowed: AllowedHosts) -> Middleware:
    """The middleware that refuses requests not addressed to this agent, and cross-site writes."""

    @web.middleware
    async def same_agent_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is not None and not allowed.admits(host):
            return text_error(
                403,
                f"Host {host!r} does not name this agent: send requests to its address, or start it with "
                f"--allow-host {_normalise(_without_port(host)) or 'NAME'} (a guard against DNS rebinding)",
            )
        if request.method in WRITES:
            refusal = _cross_site(request, host)
            if refusal:
                return text_error(403, f"{refusal}: the dev agent takes writes from its own origin only")
        return await handler(request)

    return same_agent_only


def _cross_site(request: web.Request, host: str | None) -> str:
    """Why a write looks like a browser's cross-site request, or "" when it does not."""
    fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
    if fetch_site in ("cross-site", "same-site"):
        return f"a {fetch_site} request (Sec-Fetch-Site)"
    origin = request.headers.get("Origin")
    if origin is None:
        return ""
    own = f"{request.scheme}://{host}".lower() if host else None
    if origin.lower().rstrip("/") != own:
        return f"a write from origin {origin!r}"
    return ""


def _without_port(host: str) -> str:
    host = host.strip()
    if host.startswith("["):  # [::1]:8500
        return host[1:].partition("]")[0]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name
    return host


def _normalise(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback_ip(host: str) -> bool:
    return _is_ip(host) and ipaddress.ip_address(host).is_loopback
