"""Raw bytes through a gRPC server: what the sidecar needs to proxy any method without knowing its types.

Every method is served as stream-stream with no (de)serializers, so messages stay bytes end to end (no
protobuf decoding) and a unary call is a stream of one. Metadata passes through except the headers that belong
to one HTTP/2 hop or that the transport sets itself; status, details, and trailers (``grpc-status-details-bin``
included) are copied back unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc

# Set by grpc itself on every hop, or carried by other means (the deadline travels as the call's timeout).
HOP_HEADERS = frozenset(
    {
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-previous-rpc-attempts",
        "user-agent",
        "te",
        "content-type",
        "content-length",
        "connection",
        "keep-alive",
        "host",
    }
)

# An async generator of replies, or a coroutine that writes them with context.write() (grpc.aio serves both).
RawHandler = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncIterator[bytes] | Awaitable[None]]
MAX_CACHED_METHODS = 4096  # method paths come from callers: past this many, new paths get a handler per call


def forwardable(metadata: Iterable[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    """The caller's metadata minus hop-by-hop and pseudo headers."""
    if not metadata:
        return ()
    return tuple((key, value) for key, value in metadata if key not in HOP_HEADERS and not key.startswith(":"))


class RawMethods(grpc.GenericRpcHandler):
    """Serve every method path with one raw-bytes stream-stream handler, made per method path on first use."""

    def __init__(self, make_handler: Callable[[str], RawHandler]) -> None:
        self._make_handler = make_handler
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        found = self._handlers.get(method)
        if found is None:
            found = grpc.stream_stream_rpc_method_handler(self._make_handler(method))
            if len(self._handlers) < MAX_CACHED_METHODS:
                self._handlers[method] = found
        return found


async def relay_status(context: grpc.aio.ServicerContext, call: Any) -> None:
    """Copy a finished client call's trailers, code and details onto the server call that relays it."""
    trailers = await call.trailing_metadata()
    if trailers:
        context.set_trailing_metadata(forwardable(trailers))
    code = await call.code()
    if code is not grpc.StatusCode.OK:
        context.set_code(code)
        context.set_details(await call.details() or "")


async def abort_with(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError) -> None:
    """End the server call with a failed client call's status, details and trailers (ErrorInfo included)."""
    await context.abort(error.code(), error.details() or "", forwardable(error.trailing_metadata()))
