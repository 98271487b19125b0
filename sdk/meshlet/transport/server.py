"""The server side of the SDK: a grpc.aio server interceptor that runs every call through the inbound pipeline
before the servicer, whatever its RPC kind; and how every server of meshlet's (this one, the sidecar's
listeners, its L4 refusal server) answers a call an inbound stage refused.

A call the handler makes that fails, and that the handler lets escape, leaves the server as UPSTREAM_FAILED
(see meshlet.errors.upstream_failed), never as the downstream's own status: a downstream's UNAVAILABLE passed
on would make the caller's mesh retry this healthy server and count the failure against it.

Wrapped handlers are built once per method and cached, so per call the cost is one InboundCall and the stages.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from meshlet.call import InboundCall
from meshlet.deadline import Clock, Deadline
from meshlet.errors import MeshError, upstream_failed
from meshlet.inbound.abandoned import mark_abandoned

# Trap: a server that ends a call while its client is still writing the request stream makes that client's
# pending write fail, and grpc.aio then reports grpc's own INTERNAL "Internal error from Core" instead of the
# server's status (transport/streams.py; measured: most refused bidi streams with large messages). So a refused
# call's request stream is read, and dropped, up to its half-close before the refusal is sent: once the client
# has half-closed, none of its writes is pending. Bounded, so that a refused caller cannot make the server read
# without end: past REFUSAL_READ_BYTES or REFUSAL_READ_S (a client that waits for a reply before it writes on)
# the refusal goes out as it is.
REFUSAL_READ_BYTES = 4 * 1024 * 1024
REFUSAL_READ_S = 1.0

Pipeline = Callable[[InboundCall], Awaitable[Any]]
PipelineBuilder = Callable[[Callable[[InboundCall], Awaitable[Any]]], Pipeline]


class InboundInterceptor(grpc.aio.ServerInterceptor):
    """Runs meshlet's inbound stages around every servicer method."""

    def __init__(
        self, build: PipelineBuilder, clock: Clock, identify: Callable[[Any], str | None] | None = None
    ) -> None:
        self._clock = clock
        self._cache: dict[str, grpc.RpcMethodHandler] = {}
        self._build = build
        self._identify = identify  # reads the caller's verified SPIFFE ID from the context when mTLS is on

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._cache[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        clock = self._clock
        identify = self._identify
        streamed = handler.request_streaming  # the request is a stream a refusal reads to its end first

        if handler.unary_unary or handler.stream_unary:
            original = handler.unary_unary or handler.stream_unary

            async def terminal_unary(call: InboundCall) -> Any:
                try:
                    return await original(call.request, call.context)
                except grpc.aio.AioRpcError as failed:  # a call the handler made: never a status of this server's
                    await abort_upstream_failed(call.context, failed)

            pipeline = self._build(terminal_unary)

            async def unary_response(request: Any, context: Any) -> Any:
                try:
                    return await pipeline(inbound_call(method, request, context, clock, identify))
                except MeshError as refused:
                    await abort_refused(context, refused, request if streamed else None)

            if handler.unary_unary:
                return grpc.unary_unary_rpc_method_handler(
                    unary_response, handler.request_deserializer, handler.response_serializer
                )
            return grpc.stream_unary_rpc_method_handler(
                unary_response, handler.request_deserializer, handler.response_serializer
            )

        original = handler.unary_stream or handler.stream_stream

        async def terminal_stream(call: InboundCall) -> Any:
            return original(call.request, call.context)

        pipeline = self._build(terminal_stream)

        async def stream_response(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                result = await pipeline(inbound_call(method, request, context, clock, identify))
            except MeshError as refused:
                await abort_refused(context, refused, request if streamed else None)
            try:
                if inspect.isasyncgen(result):
                    async for reply in result:
                        yield reply
                elif inspect.isawaitable(result):  # a handler that writes with context.write()
                    await result
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:  # the caller went away: grpc.aio tells the done callbacks nothing
                mark_abandoned(context)
                raise
            except grpc.aio.AioRpcError as failed:  # a call the handler made
                await abort_upstream_failed(context, failed)
            except Exception:
                # grpc.aio ends the call UNKNOWN but tells its done callbacks (span, metrics, access log) nothing.
                context.set_code(grpc.StatusCode.UNKNOWN)
                raise

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                stream_response, handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            stream_response, handler.request_deserializer, handler.response_serializer
        )


def inbound_call(
    method: str, request: Any, context: Any, clock: Clock, identify: Callable[[Any], str | None] | None
) -> InboundCall:
    """The InboundCall for one server call: its metadata, deadline, the caller's verified identity and address."""
    remaining = context.time_remaining()
    deadline = Deadline(clock() + remaining, clock) if remaining is not None else None
    peer_uri = identify(context) if identify is not None else None
    return InboundCall(method, context.invocation_metadata(), request, context, deadline, peer_uri, context.peer())


async def abort_upstream_failed(context: Any, failed: grpc.aio.AioRpcError) -> None:
    """Answer for a handler that let a failed call of its own escape: UPSTREAM_FAILED, or the caller's own
    deadline or cancellation as it is."""
    answer = upstream_failed(failed, context.time_remaining())
    if answer is None:
        await context.abort(failed.code(), failed.details() or "")
    else:
        await abort_refused(context, answer)


async def abort_refused(context: Any, refused: MeshError, requests: AsyncIterator[Any] | None = None) -> None:
    """Answer a call an inbound stage refused with the refusal's status, message and ErrorInfo trailers. A call
    with a request stream (`requests`) is answered once that stream is read to its half-close, within bounds."""
    if requests is not None:
        await read_to_half_close(requests)
    await context.abort(refused.code(), refused.details() or "", tuple(refused.trailing_metadata() or ()))


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
