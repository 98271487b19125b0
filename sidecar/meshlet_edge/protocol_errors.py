"""The answers aiohttp makes itself, before any handler or middleware of the edge runs (a request line or header
past the limits, a request that is not HTTP, a chunked body that breaks its framing) or after one raised, in the
edge's one error shape: google.rpc.Status JSON with an ``X-Request-Id``, not aiohttp's ``text/plain`` page (which
also echoes the first hundred bytes of what the client sent).

aiohttp builds these in ``RequestHandler.handle_error``; the runner here makes its connections with a handler
that keeps aiohttp's logging and connection closing and replaces only the body."""

from __future__ import annotations

import grpc
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from meshlet.http_limits import MAX_LINE_BYTES
from meshlet_edge.request_id import HEADER, REQUEST_KEY, random_uuid
from meshlet_edge.responses import error_answer
from meshlet_edge.status import refusal

CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 413: grpc.StatusCode.RESOURCE_EXHAUSTED}


def what_went_wrong(status: int, error: BaseException | None) -> tuple[grpc.StatusCode, str]:
    """The status code and message of aiohttp's own answer `status` to `error`. Pure."""
    if isinstance(error, LineTooLong):
        return grpc.StatusCode.INVALID_ARGUMENT, (
            f"the request line or a header is longer than {MAX_LINE_BYTES} bytes: shorten the path, "
            "query or header (a long query's fields can go in a POST body where the route takes one)"
        )
    if isinstance(error, BadHttpMessage) or status == 400:
        return grpc.StatusCode.INVALID_ARGUMENT, "the request is not valid HTTP/1.1: send a well-formed request"
    if status in CODES:
        return CODES[status], f"the request was refused ({status})"
    if status == 504:
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the edge gave up on the request: try again"
    return grpc.StatusCode.INTERNAL, "the edge failed to serve the request; its log says why"


class ShapedRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs; raises when the answer has begun
        code, what = what_went_wrong(status, exc)
        found = request.get(REQUEST_KEY) if isinstance(request, web.Request) else None
        shaped = error_answer(refusal(code, what), plain.status, {HEADER: found or random_uuid()})
        shaped.force_close()
        return shaped


class ShapedServer(web.Server):
    def __call__(self) -> RequestHandler:
        return ShapedRequestHandler(self, loop=self._loop, **self._kwargs)


class ShapedAppRunner(web.AppRunner):
    """An AppRunner whose connections answer aiohttp's own errors in the one error shape."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ShapedServer  # the same server; only the handler it makes per connection differs
        return server
