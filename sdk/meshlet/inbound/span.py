"""Stage: a SERVER span per call that continues the caller's trace (W3C ``traceparent``/``tracestate`` in the
metadata), with the caller's verified identity and the status the call ended with.

After rate limiting (a refused call costs no span) and before ExposeDeadline. The span is made current for
the rest of the call's task, as ExposeDeadline does with the deadline: grpc.aio runs each call in its own
task, so the handler's outbound calls (a servicer's, or the sidecar's ForwardToApp) become its children,
streaming handlers included. A unary call's span ends when the handler returns; a streaming one's when grpc
reports the call done.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.context import Context, attach, detach
from opentelemetry.trace import Span, Tracer, get_current_span, set_span_in_context

from meshlet.call import InboundCall
from meshlet.inbound.abandoned import abandoned_code
from meshlet.telemetry.method_names import MethodNames, proves_method
from meshlet.telemetry.propagation import carries_context, extract, trace_fields
from meshlet.telemetry.tracing import SERVER, SpanStarts, Unrecorded, end_span, rpc_attributes, status_of


class ContinueTrace:
    __slots__ = ("_fields", "_starts", "_tracer", "_unrecorded")

    def __init__(self, tracer: Tracer, names: MethodNames | None = None) -> None:
        self._tracer = tracer
        self._starts = SpanStarts(_start_attributes, names)  # per method and caller identity; junk is "(unknown)"
        self._fields = trace_fields()
        self._unrecorded = Unrecorded(tracer)

    async def __call__(self, call: InboundCall, next: Callable[[InboundCall], Awaitable[Any]]) -> Any:
        metadata = call.metadata
        carried = carries_context(metadata, self._fields)
        parent = extract(metadata) if carried else Context()
        if self._unrecorded(get_current_span(parent).get_span_context()):
            if not carried:
                return await next(call)
            # No span, but the caller's context is current, so the handler's own calls pass it on.
            return await _within(parent, call, next)
        name, attributes = self._starts((call.method, call.peer_uri), call.method)
        address, port = peer_address(call.peer_address)
        if address:  # the caller's address and port change with each connection: not worth a cache entry
            attributes = {**attributes, "network.peer.address": address}
            if port:
                attributes["network.peer.port"] = port
        span = self._tracer.start_span(name, context=parent, kind=SERVER, attributes=attributes)
        recording = span.is_recording()
        token = attach(set_span_in_context(span, parent))
        try:
            reply = await next(call)
        except BaseException as error:
            detach(token)
            if recording:
                self._end(span, name, call.method, call.context, error)
            raise
        streaming = inspect.isasyncgen(reply) or inspect.isawaitable(reply)
        if not streaming:
            detach(token)  # a unary handler has run: nothing of this call runs in the task after it
        if recording:
            context = call.context
            if streaming and context is not None:
                context.add_done_callback(lambda done: self._end(span, name, call.method, done, None))
            else:
                self._end(span, name, call.method, context, None)
        return reply

    def _end(self, span: Span, name: str, path: str, context: Any, error: BaseException | None) -> None:
        def rename(code: grpc.StatusCode) -> None:  # an "(unknown)" span whose method answered takes its name
            self._starts.rename_if_answered(span, name, path, proves_method(code))

        _end(span, context, error, before_end=rename)


def _start_attributes(key: tuple[str, str | None]) -> dict[str, Any]:
    method, peer_uri = key
    attributes = rpc_attributes(method)
    if peer_uri:
        attributes["meshlet.peer.identity"] = peer_uri
    return attributes


async def _within(context: Context, call: InboundCall, next: Callable[[InboundCall], Awaitable[Any]]) -> Any:
    """Run the handler with `context` current: for a unary call only while it runs, for a stream (whose
    handler runs after this returns, in the same task) until the task ends."""
    token = attach(context)
    try:
        reply = await next(call)
    except BaseException:
        detach(token)
        raise
    if not (inspect.isasyncgen(reply) or inspect.isawaitable(reply)):
        detach(token)
    return reply


def _end(
    span: Span, context: Any, error: BaseException | None, before_end: Callable[[grpc.StatusCode], None] | None = None
) -> None:
    """The status the caller sees: what the handler set on (or aborted) its context, else the error's."""
    code: grpc.StatusCode | None = None
    details: str | None = None
    if context is not None:
        try:
            code, details = context.code(), context.details()
        except (AttributeError, NotImplementedError):
            code = None
    if isinstance(code, int):  # grpc.aio may hand back the raw integer
        code = _BY_VALUE.get(code)
    if code is None and error is None and context is not None and _cancelled(context):
        code, details = grpc.StatusCode.CANCELLED, "cancelled by the caller"
    if code is None and isinstance(error, asyncio.CancelledError):
        code, details = abandoned_code(context), "the caller went away"
    if code is None:
        code, details = status_of(error)
    if before_end is not None:
        before_end(code)
    end_span(span, code, details if isinstance(details, str) else None, server=True)


_BY_VALUE = {status.value[0]: status for status in grpc.StatusCode}


def _cancelled(context: Any) -> bool:
    try:
        return bool(context.cancelled())
    except (AttributeError, NotImplementedError):
        return False


def peer_address(peer: str) -> tuple[str, int | None]:
    """``ipv4:10.0.0.7:53122`` -> (``10.0.0.7``, 53122); ``ipv6:[::1]:5`` -> (``::1``, 5); else (peer, None)."""
    if not peer.startswith(("ipv4:", "ipv6:")):
        return peer, None
    host, _, port = peer[5:].rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None
