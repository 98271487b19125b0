"""Stages: what each outbound call and attempt did, for the metrics and the access log.

ObserveCall runs once per call, right below the call span, so the access log line carries the call span's
trace and span ids, and a sampled call's trace id becomes its latency bucket's exemplar. It counts the call by
its final status (a refusal by a stage below included, and that refusal by its meshlet reason), its duration,
and for a response stream does both when the stream ends. CountAttempt runs per attempt, after the pick:
attempts by status, and the attempts that never started because their TLS handshake failed (as the send
stage's explainer found: TLS_HANDSHAKE_FAILED; never read from a status's text). Both are in the lists only
when metrics or the access log are on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.trace import SpanContext

from meshlet.call import Call
from meshlet.deadline import Clock
from meshlet.errors import ErrorReason, MeshError, error_info
from meshlet.pipeline import ReplyStream
from meshlet.telemetry.access_log import AccessLog, current_span, sampled_trace_id
from meshlet.telemetry.method_names import MethodNames, answered
from meshlet.telemetry.metrics import CallMetrics, Metrics, method_label


def status_name(error: BaseException | None) -> str:
    """The gRPC status name a call or attempt ended with: OK, its code, CANCELLED when the caller left."""
    if error is None:
        return "OK"
    if isinstance(error, grpc.aio.AioRpcError):
        name: str = error.code().name
        return name
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


class ObserveCall:
    __slots__ = ("_access", "_calls", "_clock", "_refusals", "_service")

    def __init__(
        self,
        service: str,
        metrics: Metrics | None,
        access_log: AccessLog | None,
        clock: Clock,
        names: MethodNames | None = None,
    ) -> None:
        self._service = service
        self._calls: CallMetrics | None = metrics.calls("outbound", service, names) if metrics is not None else None
        self._refusals = metrics.refusals_of("outbound", service) if metrics is not None else {}
        self._access = access_log
        self._clock = clock

    async def __call__(self, call: Call, next: Callable[[Call], Awaitable[Any]]) -> Any:
        start = self._clock()
        try:
            reply = await next(call)
        except BaseException as error:
            if isinstance(error, MeshError) and (refusals := self._refusals.get(error.reason)) is not None:
                refusals.inc()
            self._finish(call, error, start, current_span())
            raise
        # A stream ends after the call's span has stopped being current: its ids are taken now.
        span = current_span()
        if isinstance(reply, ReplyStream):
            reply.add_done_callback(lambda error: self._finish(call, error, start, span))
        else:
            self._finish(call, None, start, span)
        return reply

    def _finish(self, call: Call, error: BaseException | None, start: float, span: SpanContext | None) -> None:
        duration_s = self._clock() - start
        code = status_name(error)
        calls = self._calls
        if calls is not None:
            calls.method(call.method.path, answered(error)).request(code, duration_s, sampled_trace_id(span))
        access = self._access
        if access is not None and access.enabled():
            endpoint = call.endpoint
            access.outbound(
                self._service,
                method_label(call.method.path),  # the path as it came: a line per call, no label to bound
                code,
                duration_s,
                attempts=call.attempt,
                endpoint=str(endpoint) if endpoint is not None else None,
                span=span,
            )


class CountAttempt:
    __slots__ = ("_calls", "_tls_failures")

    def __init__(self, service: str, metrics: Metrics, names: MethodNames | None = None) -> None:
        self._calls = metrics.calls("outbound", service, names)
        self._tls_failures = metrics.tls_handshake_failures.labels("outbound", service)

    async def __call__(self, call: Call, next: Callable[[Call], Awaitable[Any]]) -> Any:
        try:
            reply = await next(call)
        except grpc.aio.AioRpcError as error:
            code: grpc.StatusCode = error.code()
            self._calls.method(call.method.path, answered(error)).attempt(code.name)
            if code is grpc.StatusCode.UNAVAILABLE and failed_its_handshake(call, error):
                self._tls_failures.inc()
            raise
        except BaseException as error:
            self._calls.method(call.method.path, answered=False).attempt(status_name(error))
            raise
        if isinstance(reply, ReplyStream):
            calls, path = self._calls, call.method.path
            reply.add_done_callback(lambda error: calls.method(path, answered(error)).attempt(status_name(error)))
        else:
            self._calls.method(call.method.path).attempt("OK")
        return reply


def failed_its_handshake(attempt: Call, error: grpc.aio.AioRpcError) -> bool:
    """`attempt` could not connect, and the explainer found its endpoint failing the TLS handshake."""
    if attempt.may_have_reached_server:  # a started call: its status is a server's (or a broken connection's)
        return False
    info = error_info(error)
    return info is not None and info.reason == ErrorReason.TLS_HANDSHAKE_FAILED
