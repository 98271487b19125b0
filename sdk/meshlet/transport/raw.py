"""Raw bytes through a gRPC server: what the sidecar needs to proxy any method without knowing its types.

Messages stay bytes end to end (no (de)serializers, no protobuf decoding). A method whose kind the listener
knows is served with a handler of that kind (a unary call as unary, which costs grpc about a third less); any
other is served as stream-stream, where a unary call is a stream of one. Metadata passes through except the
headers that belong to one HTTP/2 hop or that the transport sets itself; status, details, and trailers
(``grpc-status-details-bin`` included) are copied back unchanged. A path that is not exactly ``/<service>/<method>``
is refused before its listener builds anything for it (`refuse_path`), so no stage ever sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

import grpc

from meshlet.call import is_canonical_method
from meshlet.errors import MethodPathInvalid

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
# A unary method's handler: the request's bytes in, the reply's bytes out.
RawUnaryHandler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes | None]]
MAX_CACHED_METHODS = 4096  # method paths come from callers: past this many, new paths get a handler per call

# Trap: a server that ends a call while its client is still writing the request stream makes that client's
# pending write fail, and grpc.aio then reports grpc's own INTERNAL "Internal error from Core" instead of the
# server's status (transport/streams.py; measured: most refused bidi streams with large messages). So a refused
# call's request stream is read, and dropped, up to its half-close before the refusal is sent: once the client
# has half-closed, none of its writes is pending. Bounded, so that a refused caller cannot make the server read
# without end: past REFUSAL_READ_BYTES or REFUSAL_READ_S (a client that waits for a reply before it writes on)
# the refusal goes out as it is.
REFUSAL_READ_BYTES = 4 * 1024 * 1024
REFUSAL_READ_S = 1.0


class Learning(Protocol):
    """Where a method's kind may yet be learnt (the sidecar's MethodTable): `version` grows when it learns."""

    version: int

    def missed(self, path: str) -> None:
        """A call arrived for `path` while its kind is unknown."""


# A listener's answer for one method path: the grpc handler; the Learning its kind was read from, whose next
# version makes RawMethods build the handler again (None: final, e.g. no route); and whether the kind was
# unknown (then every call tells the Learning it missed, so that it asks).
Built = tuple[grpc.RpcMethodHandler, Learning | None, bool]


def generic_handler(behaviour: RawHandler) -> grpc.RpcMethodHandler:
    """Any method as raw-bytes stream-stream: right for every kind, the slowest for unary calls."""
    return grpc.stream_stream_rpc_method_handler(behaviour)


def unary_handler(behaviour: RawUnaryHandler) -> grpc.RpcMethodHandler:
    """A unary method, as raw bytes."""
    return grpc.unary_unary_rpc_method_handler(behaviour)


def refuse_path(path: str) -> grpc.RpcMethodHandler:
    """The handler for a path that is not exactly ``/<service>/<method>``: UNIMPLEMENTED (METHOD_PATH_INVALID)
    for every call, before any stage (identity, intentions, rate limits, routes) or the app sees it."""
    refusal = MethodPathInvalid(
        f"{path[:256]!r} is not a gRPC method path: call /<package.Service>/<Method> exactly (a leading '/', two "
        "non-empty segments of letters, digits, '_' and, in the service, '.'; nothing after); the mesh refuses any "
        "other path so that no per-method policy is bypassed",
        metadata={"method": path[:256]},
    )
    code, details, trailers = refusal.code(), refusal.details() or "", tuple(refusal.trailing_metadata() or ())

    async def refuse(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        await read_to_half_close(requests)  # so the caller reads this answer, not INTERNAL (see REFUSAL_READ_BYTES)
        await context.abort(code, details, trailers)

    return grpc.stream_stream_rpc_method_handler(refuse)


async def read_to_half_close(requests: AsyncIterator[Any]) -> bool:
    """Read and drop a refused call's request messages until the client half-closes (True) or a bound is
    reached (False): REFUSAL_READ_BYTES read, or REFUSAL_READ_S gone by."""
    read = 0
    try:
        async with asyncio.timeout(REFUSAL_READ_S):
            async for message in requests:
                read += _size(message)
                if read > REFUSAL_READ_BYTES:
                    return False
    except TimeoutError:
        return False
    except grpc.RpcError:  # the stream broke: none of the caller's writes is pending
        return False
    return True


def _size(message: Any) -> int:
    """A request message's size on the wire: raw bytes as they are, a protobuf message by its ByteSize()."""
    if isinstance(message, bytes):
        return len(message)
    byte_size = getattr(message, "ByteSize", None)
    return byte_size() if byte_size is not None else 0  # another codec's message: only the time bound holds


def forwardable(
    metadata: Iterable[tuple[str, Any]] | None, dropped: frozenset[str] = HOP_HEADERS
) -> tuple[tuple[str, Any], ...]:
    """The caller's metadata minus hop-by-hop and pseudo headers (and any other `dropped`)."""
    if not metadata:
        return ()
    return tuple((key, value) for key, value in metadata if key not in dropped and not key.startswith(":"))


class RawMethods(grpc.GenericRpcHandler):
    """Serve every method path with the raw-bytes handler its listener builds for it, once per path and again
    whenever the Learning it was built from has learnt something: a method learnt unary takes the fast path, and
    one whose kind changed (the app redeployed with that method streaming) takes the right handler again.

    A path that is not canonical never reaches the listener: it gets `refuse_path`, built per call and not kept,
    so that callers sending odd paths cannot crowd the real methods out of the cache."""

    def __init__(self, make_handler: Callable[[str], Built]) -> None:
        self._make_handler = make_handler
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, Learning | None, int, bool]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        found = self._handlers.get(method)
        if found is not None:
            handler, learning, version, unknown = found
            if learning is None:
                return handler
            if learning.version == version:
                if unknown:
                    learning.missed(method)
                return handler
        if not is_canonical_method(method):
            return refuse_path(method)
        handler, learning, unknown = self._make_handler(method)
        if found is not None or len(self._handlers) < MAX_CACHED_METHODS:
            self._handlers[method] = (handler, learning, 0 if learning is None else learning.version, unknown)
        if learning is not None and unknown:
            learning.missed(method)
        return handler


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
