"""Stage (per attempt, first): a CLIENT span for each attempt of a sampled call, child of the call's INTERNAL
span, so every retry is visible in the trace: attempt number, endpoint, status, and the backoff slept before it.
The attempts are the only CLIENT spans: what went on the wire, once each.

First in the per-attempt list, so an attempt that found no endpoint is recorded too. The attempt's span is
current while it runs (a breaker that its outcome opens adds its event there), and its context replaces the
call's in the metadata sent: the server's span is the child of the attempt that reached it. CallSpan has
already removed any incoming trace headers from the metadata, so this stage only appends its own. For an
unsampled call it does nothing: CallSpan already put the call's context in the metadata.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.context import attach, detach
from opentelemetry.trace import Span, Tracer, get_current_span, set_span_in_context

from meshlet.call import Call
from meshlet.endpoints import Endpoint
from meshlet.errors import MeshError
from meshlet.pipeline import ReplyStream
from meshlet.telemetry.method_names import MethodNames, answered
from meshlet.telemetry.propagation import headers
from meshlet.telemetry.tracing import BACKOFF_S, CLIENT, SpanStarts, end_span_with, rpc_attributes


class AttemptSpan:
    __slots__ = ("_first", "_later", "_tracer")

    def __init__(self, tracer: Tracer, names: MethodNames | None = None) -> None:
        self._tracer = tracer
        self._first = SpanStarts(_first_attempt, names)  # most calls take one attempt: all its attributes built once
        self._later = SpanStarts(rpc_attributes, names)

    async def __call__(self, call: Call, next: Callable[[Call], Awaitable[Any]]) -> Any:
        if not get_current_span().is_recording():
            return await next(call)
        path = call.method.path
        if call.attempt > 1:
            name, rpc = self._later(path, path)
            attributes = {**rpc, "meshlet.attempt": call.attempt, "meshlet.backoff_s": BACKOFF_S.get()}
        else:
            name, attributes = self._first(path, path)
        span = self._tracer.start_span(name, kind=CLIENT, attributes=attributes)
        context = set_span_in_context(span)
        base = call.metadata
        call.metadata = (*(base or ()), *headers(context))
        token = attach(context)
        try:
            reply = await next(call)
        except BaseException as error:
            self._first.rename_if_answered(span, name, path, answered(error))
            _finish(span, call, error)
            raise
        finally:
            detach(token)
            call.metadata = base
        if isinstance(reply, ReplyStream):
            endpoint = call.endpoint

            def done(error: BaseException | None) -> None:
                self._first.rename_if_answered(span, name, path, answered(error))
                _finish(span, call, error, endpoint)

            reply.add_done_callback(done)
        else:
            self._first.rename_if_answered(span, name, path, True)
            _finish(span, call, None)
        return reply


def _first_attempt(path: str) -> dict[str, Any]:
    return {**rpc_attributes(path), "meshlet.attempt": 1, "meshlet.backoff_s": 0.0}


def _finish(span: Span, call: Call, error: BaseException | None, endpoint: Endpoint | None = None) -> None:
    # A MeshError below this stage is the pick's (no endpoint to try): `call.endpoint` is still the last attempt's.
    endpoint = endpoint or (None if isinstance(error, MeshError) else call.endpoint)
    attributes = {"server.address": endpoint.address, "server.port": endpoint.port} if endpoint is not None else {}
    end_span_with(span, error, attributes=attributes)
