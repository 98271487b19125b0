"""Stage 1: one INTERNAL span per call, named ``pkg.Service/Method`` with the RPC conventions' attributes, above
the CLIENT span of each attempt (outbound/attempt_span.py), as OpenTelemetry's conventions for retried calls want:
span-derived RED numbers (spanmetrics, Jaeger's monitor tab) count the attempts that went on the wire once each,
and the logical call, retries and refusals included, is the INTERNAL span above them.

Outermost, so the span sees every outcome, refusals made before any attempt included (a full bulkhead, a
deadline too short). Its parent is the caller's current span (SDK: the handler's server span, via contextvars),
or, when no span is current and the call's own metadata carries a trace context (the sidecar proxying an app's
call), that one: the app's trace continues through its sidecar. Incoming trace headers are replaced, never
forwarded twice (a handler that forwards its caller's metadata does not make its call a sibling of itself).

A call that will not be recorded (its caller's trace is unsampled, or ratio 0 and no caller's trace) gets no
span at all, only its context sent on: the caller's, or for a new trace a fresh unsampled one, so the next hops
follow the same decision instead of starting traces of their own mid-way. A sampled
call's context is sent by each attempt's own span (outbound/attempt_span.py), so a server's span hangs under
the attempt that reached it. The span ends when the reply completes; for a response stream, when the stream does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.trace import Span, Tracer, get_current_span, set_span_in_context

from meshlet.call import Call
from meshlet.pipeline import ReplyStream
from meshlet.telemetry.method_names import MethodNames, answered
from meshlet.telemetry.propagation import carries_context, extract, headers, trace_fields, without
from meshlet.telemetry.tracing import INTERNAL, SpanStarts, Unrecorded, end_span_with, rpc_attributes, unsampled_root


class CallSpan:
    __slots__ = ("_fields", "_starts", "_tracer", "_unrecorded")

    def __init__(self, tracer: Tracer, names: MethodNames | None = None) -> None:
        self._tracer = tracer
        self._starts = SpanStarts(_start_attributes, names)  # an invented method's span is "(unknown)"
        self._fields = trace_fields()
        self._unrecorded = Unrecorded(tracer)

    async def __call__(self, call: Call, next: Callable[[Call], Awaitable[Any]]) -> Any:
        parent: Context | None = None
        metadata = call.metadata
        carried = bool(metadata) and carries_context(metadata, self._fields)
        if carried:
            metadata = without(metadata, self._fields)  # whatever goes on is decided here, never sent twice
            if not get_current_span().get_span_context().is_valid:  # not a handler forwarding its caller's headers
                parent = extract(call.metadata)  # type: ignore[arg-type]
        caller = get_current_span(parent).get_span_context()
        if self._unrecorded(caller):
            if parent is not None and caller.is_valid:
                return await next(call)  # the app's own unsampled context: on as it came
            # A handler's unsampled context, or a new trace that ratio 0 does not sample: the next hops must
            # learn the decision, or they would start traces of their own in the middle of this one.
            context = get_current() if caller.is_valid else unsampled_root()
            call.metadata = (*(metadata or ()), *headers(context))
            return await next(call)
        call.metadata = metadata
        path = call.method.path
        name, attributes = self._starts((path, call.upstream), path)
        span = self._tracer.start_span(name, context=parent, kind=INTERNAL, attributes=attributes)
        context = set_span_in_context(span, parent)
        recording = span.is_recording()
        if not recording:  # another sampler said no: the attempts send nothing of their own, so it travels from here
            call.metadata = (*(metadata or ()), *headers(context))
        token = attach(context)
        try:
            reply = await next(call)
        except BaseException as error:
            if recording:
                self._end(span, name, path, call, error)
            raise
        finally:
            detach(token)
        if recording:
            if isinstance(reply, ReplyStream):
                reply.add_done_callback(lambda error: self._end(span, name, path, call, error))
            else:
                self._end(span, name, path, call, None)
        return reply

    def _end(self, span: Span, name: str, path: str, call: Call, error: BaseException | None) -> None:
        self._starts.rename_if_answered(span, name, path, answered(error))
        end_span_with(span, error, attributes={"meshlet.attempts": call.attempt})


def _start_attributes(key: tuple[str, str]) -> dict[str, Any]:
    path, upstream = key
    return {**rpc_attributes(path), "meshlet.upstream": upstream}
