"""What every answer of the edge's HTTP port carries, whichever handler made it: the request's ``X-Request-Id``
(chosen before the handler runs, so that the handler, its log lines and its span can use it), and, for a body
worth it, the compression the client accepts, with ``Vary: Accept-Encoding``. One aiohttp middleware for the
bodies made whole, and a prepare hook for the header of streamed answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from meshlet_edge import compression, request_id

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OFFLOAD_BYTES = 128 * 1024  # compress bodies past this in a thread, so the loop keeps serving meanwhile


def middleware(min_bytes: int) -> Middleware:
    @web.middleware
    async def finish(request: web.Request, handler: Handler) -> web.StreamResponse:
        chosen = request_id.request_id(request.headers.get(request_id.HEADER))
        request[request_id.REQUEST_KEY] = chosen
        token = request_id.current.set(chosen)
        try:
            response = await handler(request)
        finally:
            request_id.current.reset(token)
        if isinstance(response, web.Response) and not response.prepared:
            await _compress(request, response, min_bytes)
        return response

    return finish


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` hook: every answer, streamed or whole, says which request it answers."""
    found = request.get(request_id.REQUEST_KEY)
    if found is not None:
        response.headers[request_id.HEADER] = found


async def _compress(request: web.Request, response: web.Response, min_bytes: int) -> None:
    body = response.body
    if not isinstance(body, bytes) or hdrs.CONTENT_ENCODING in response.headers:
        return
    if not compression.is_compressible(response.content_type):
        return
    _vary_on_accept_encoding(response)
    coding = compression.choose_coding(request.headers.get(hdrs.ACCEPT_ENCODING))
    if coding is None or len(body) < min_bytes or response.status in (204, 304):
        return
    if len(body) > OFFLOAD_BYTES:
        response.body = await asyncio.to_thread(compression.compress, body, coding)
    else:
        response.body = compression.compress(body, coding)
    response.headers[hdrs.CONTENT_ENCODING] = coding


def _vary_on_accept_encoding(response: web.Response) -> None:
    present = [v.strip() for v in response.headers.get(hdrs.VARY, "").split(",") if v.strip()]
    if not any(v.lower() in ("accept-encoding", "*") for v in present):
        response.headers[hdrs.VARY] = ", ".join([*present, "Accept-Encoding"])
