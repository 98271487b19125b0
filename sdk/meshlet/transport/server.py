"""The server side of the SDK: a grpc.aio server interceptor that runs every call through the inbound pipeline
before the servicer, whatever its RPC kind; and how every server of meshlet's (this one, the sidecar's
listeners, its L4 refusal server) answers a call an inbound stage refused.

A call the handler makes that fails, and that the handler lets escape, leaves the server as UPSTREAM_FAILED
(see meshlet.errors.upstream_failed), never as the downstream's own status: a downstream's UNAVAILABLE passed
on would make the caller's mesh retry this healthy server and count the failure against it.

Wrapped handlers are built once per method and cached, so per call the cost is one InboundCall and the stages. A path
that is not exactly ``/<service>/<method>`` is refused before any servicer or stage sees it (UNIMPLEMENTED,
METHOD_PATH_INVALID), whatever handlers the server has.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from meshlet.call import InboundCall, is_canonical_method
from meshlet.deadline import Clock, Deadline
from meshlet.errors import MeshError, upstream_failed
from meshlet.inbound.abandoned import mark_abandoned
from meshlet.security.peers import PeerVerdict
from meshlet.transport.raw import read_to_half_close, refuse_path

Pipeline = Callable[[InboundCall], Awaitable[Any]]
PipelineBuilder = Callable[[Callable[[InboundCall], Awaitable[Any]], str], Pipeline]  # (terminal, method path)


class InboundInterceptor(grpc.aio.ServerInterceptor):
    """Runs meshlet's inbound stages around every servicer method."""

    def __init__(
        self, build: PipelineBuilder, clock: Clock, identify: Callable[[Any], PeerVerdict] | None = None
    ) -> None:
        self._clock = clock
        self._cache: dict[str, grpc.RpcMethodHandler] = {}
        self._build = build
        self._identify = identify  # judges the caller's certificate (CallerIdentities.of_call) when mTLS is on

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        if not is_canonical_method(method):
            return refuse_path(method)  # not cached: odd paths must not crowd the real methods out
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

            pipeline = self._build(terminal_unary, method)

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

        pipeline = self._build(terminal_stream, method)

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
    method: str, request: Any, context: Any, clock: Clock, identify: Callable[[Any], PeerVerdict] | None
) -> InboundCall:
    """The InboundCall for one server call: its metadata, deadline, the caller's verified identity (or why its
    certificate names none we accept) and address."""
    remaining = context.time_remaining()
    deadline = Deadline(clock() + remaining, clock) if remaining is not None else None
    peer = identify(context) if identify is not None else None
    return InboundCall(
        method,
        context.invocation_metadata(),
        request,
        context,
        deadline,
        peer.uri if peer is not None else None,
        context.peer(),
        peer.refusal if peer is not None else None,
    )


async def abort_upstream_failed(context: Any, failed: grpc.aio.AioRpcError) -> None:
    """Answer for a handler that let a failed call of its own escape: UPSTREAM_FAILED, or the caller's own
    deadline or cancellation as it is."""
    answer = upstream_failed(failed)
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
