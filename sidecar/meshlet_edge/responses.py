"""What every answer of the edge's HTTP port carries, whichever handler made it: the request's ``X-Request-Id``
(chosen before the handler runs, so that the handler, its log lines and its span can use it), and, for a body
worth it, the compression the client accepts, with ``Vary: Accept-Encoding``. One aiohttp middleware for the
bodies made whole (a stage of the edge's handler, see meshlet_edge.stages), and a header hook for streamed answers too.

The middleware also settles the ``ETag`` a handler put on a whole answer (meshlet_edge.etags): weakened when the
body is compressed, and a 304 without body when the request's ``If-None-Match`` names it, decided here because
only here is the coding known."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, MutableMapping
from typing import Any

from aiohttp import hdrs, web
from google.rpc import status_pb2

from meshlet_edge import compression, etags, request_id
from meshlet_edge.stages import Handler, HttpStage
from meshlet_edge.status import status_json

OFFLOAD_BYTES = 128 * 1024  # compress bodies past this in a thread, so the loop keeps serving meanwhile


def middleware(min_bytes: int) -> HttpStage:
    async def finish(request: web.Request, handler: Handler) -> web.StreamResponse:
        chosen = request_id.request_id(request.headers.get(request_id.HEADER))
        request[request_id.REQUEST_KEY] = chosen
        token = request_id.current.set(chosen)
        try:
            response = await handler(request)
        finally:
            request_id.current.reset(token)
        if isinstance(response, web.Response) and not response.prepared:
            coding = _coding(request, response, min_bytes)
            etag = response.headers.get(hdrs.ETAG)
            if etag is not None:
                if coding is not None:
                    response.headers[hdrs.ETAG] = etag = etags.weaken(etag)
                if _is_fresh(request, response, etag):
                    return _not_modified(response)
            if coding is not None:
                await _compress(response, coding)
        return response

    return finish


def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """A header hook: every answer, streamed or whole, says which request it answers."""
    found = request.get(request_id.REQUEST_KEY)
    if found is not None:
        response.headers[request_id.HEADER] = found


def _coding(request: web.Request, response: web.Response, min_bytes: int) -> str | None:
    """The coding this body is sent in (None: as it is); ``Vary: Accept-Encoding`` on every body that the request's
    Accept-Encoding decides (compressible, at least `min_bytes`), whichever coding it chose. A shorter body goes as
    it is to every client, so it does not vary (and skips the header's parsing)."""
    body = response.body
    if not isinstance(body, bytes) or len(body) < min_bytes or response.status in (204, 304):
        return None
    if hdrs.CONTENT_ENCODING in response.headers or not compression.is_compressible(response.content_type):
        return None
    add_vary(response.headers, "Accept-Encoding")
    return compression.choose_coding(request.headers.get(hdrs.ACCEPT_ENCODING))


async def _compress(response: web.Response, coding: str) -> None:
    body = response.body
    assert isinstance(body, bytes)  # _coding chose a coding for bytes only
    if len(body) > OFFLOAD_BYTES:
        response.body = await asyncio.to_thread(compression.compress, body, coding)
    else:
        response.body = compression.compress(body, coding)
    response.headers[hdrs.CONTENT_ENCODING] = coding


def _is_fresh(request: web.Request, response: web.Response, etag: str) -> bool:
    """Whether the client already holds this answer (RFC 9110 13.2.2: If-None-Match, for GET and HEAD)."""
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD) or response.status != 200:
        return False
    return etags.none_match(request.headers.get(hdrs.IF_NONE_MATCH), etag)


NOT_MODIFIED_HEADERS = (hdrs.ETAG, hdrs.CACHE_CONTROL, hdrs.VARY, hdrs.AGE, "Cache-Status", hdrs.EXPIRES)


def _not_modified(response: web.Response) -> web.Response:
    """A 304 with the headers RFC 9110 15.4.5 asks the 200 be described by (its tag, caching, Vary), no body."""
    kept = {name: response.headers[name] for name in NOT_MODIFIED_HEADERS if name in response.headers}
    return web.Response(status=304, headers=kept)


def add_vary(headers: MutableMapping[str, str], name: str) -> None:
    """Name `name` in the answer's ``Vary`` (once; not beside ``*``, which already says everything)."""
    present = headers.get(hdrs.VARY)
    if not present:
        headers[hdrs.VARY] = name
        return
    names = [v.strip() for v in present.split(",") if v.strip()]
    if not any(v.lower() in (name.lower(), "*") for v in names):
        headers[hdrs.VARY] = ", ".join([*names, name])


def error_answer(
    status: status_pb2.Status, http: int, headers: Mapping[str, str] | None = None, pool: Any = None
) -> web.Response:
    """The one error shape (meshlet_edge.status) as an HTTP answer; `pool` (a route's descriptors) writes details of
    the upstream's own types."""
    return web.Response(status=http, text=status_json(status, pool), content_type="application/json", headers=headers)
