"""Stages: what each outbound call and attempt did, for the metrics and the access log.

ObserveCall runs once per call, right below the call span, so the access log line is written while the call's
span is current and carries its trace id. It counts the call by its final status (a refusal by a stage below
included), its duration, and for a response stream does both when the stream ends. CountAttempt runs per
attempt, after the pick: attempts by status, and the attempts that never started because their TLS handshake
failed (as the send stage's explainer found: TLS_HANDSHAKE_FAILED; never read from a status's text). Both are
in the lists only when metrics or the access log are on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from meshlet.call import Call
from meshlet.deadline import Clock
from meshlet.errors import ErrorReason, error_info
from meshlet.pipeline import ReplyStream
from meshlet.telemetry.access_log import AccessLog, current_trace_id
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
    __slots__ = ("_access", "_calls", "_clock", "_service")

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
        self._access = access_log
        self._clock = clock

    async def __call__(self, call: Call, next: Callable[[Call], Awaitable[Any]]) -> Any:
        start = self._clock()
        try:
            reply = await next(call)
        except BaseException as error:
            self._finish(call, error, start)
            raise
        if isinstance(reply, ReplyStream):
            # The stream ends after the call's span has stopped being current: its trace id is taken now.
            access = self._access
            trace_id = current_trace_id() if access is not None and access.enabled() else None
            reply.add_done_callback(lambda error: self._finish(call, error, start, trace_id, False))
        else:
            self._finish(call, None, start)
        return reply

    def _finish(
        self, call: Call, error: BaseException | None, start: float, trace_id: str | None = None, in_span: bool = True
    ) -> None:
        duration_s = self._clock() - start
        code = status_name(error)
        calls = self._calls
        if calls is not None:
            calls.method(call.method.path, answered(error)).request(code, duration_s)
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
                trace_id=current_trace_id() if in_span else trace_id,
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
