"""Stages: what each inbound call did, for the metrics and the access log.

CountRefusals is first in the list, so it sees the calls that IdentifyPeer, Authorize and RateLimitCaller turn
away: it counts each by its status and its meshlet reason, and denials and rate-limited calls by the caller's
service. ObserveInbound sits right below the server span, so its access log line carries the span's trace and
span ids, and a sampled call's trace id becomes its latency bucket's exemplar; it counts the calls that reach
the handler, by the status the handler ended them with, when the reply (a stream: the call) is over. Between
them every inbound call is counted once. Both are in the list only when metrics or the access log are on.

A servicer whose response stream raises (not an abort) ends its call UNKNOWN, and one whose caller goes away
CANCELLED or DEADLINE_EXCEEDED; grpc.aio would tell the call's done callback nothing about either, so the server
adapters (transport/server.py, the sidecar's inbound listener) set that code on the context first (abandoned.py).
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.trace import SpanContext

from meshlet.call import InboundCall
from meshlet.deadline import Clock
from meshlet.errors import IntentionDenied, RateLimited, Unauthenticated
from meshlet.inbound.abandoned import abandoned_code
from meshlet.security.intentions import service_of
from meshlet.telemetry.access_log import AccessLog, current_span, sampled_trace_id
from meshlet.telemetry.method_names import MethodNames, proves_method
from meshlet.telemetry.metrics import MAX_CALLERS, OTHER_CALLERS, CallMetrics, Metrics, caller_label, method_label

_STREAMED = (types.AsyncGeneratorType, types.CoroutineType)  # what a streaming terminal hands back


def handler_status(error: BaseException | None, context: Any) -> str:
    """The status an inbound call ended with, from what its handler raised (None: it returned) and its context."""
    if error is None or isinstance(error, grpc.aio.AbortError):
        code = context.code() if context is not None else None
        return "OK" if code is None else _name(code)
    if isinstance(error, grpc.aio.AioRpcError):
        return _name(error.code())
    if isinstance(error, asyncio.CancelledError):
        return _name(abandoned_code(context))
    return "UNKNOWN"


def ended_status(context: Any) -> str:
    """The status of a call that has ended, read in its done callback."""
    code = context.code()
    if code is None:
        return "CANCELLED" if context.cancelled() else "OK"
    return _name(code)


def _name(code: Any) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class _Observer:
    __slots__ = ("_access", "_callers", "_calls", "_clock", "_service")

    def __init__(
        self,
        service: str,
        metrics: Metrics | None,
        access_log: AccessLog | None,
        clock: Clock,
        names: MethodNames | None = None,
    ) -> None:
        self._service = service
        self._calls: CallMetrics | None = metrics.calls("inbound", service, names) if metrics is not None else None
        self._access = access_log
        self._clock = clock
        self._callers: dict[str | None, str] = {}  # peer SPIFFE ID -> caller label, parsed once per caller

    def _record(
        self, call: InboundCall, code: str, start: float, span: SpanContext | None, answered: bool = False
    ) -> None:
        duration_s = self._clock() - start
        calls = self._calls
        if calls is not None:
            caller = self._callers.get(call.peer_uri) or self._caller(call.peer_uri)
            calls.method(call.method, answered).request(code, duration_s, sampled_trace_id(span), caller)
        access = self._access
        if access is not None and access.enabled():
            access.inbound(
                self._service,
                method_label(call.method),
                code,
                duration_s,
                peer=call.peer_uri,
                peer_address=call.peer_address,
                span=span,
            )

    def _caller(self, peer_uri: str | None) -> str:
        """The caller's service from its SPIFFE ID (never its address: one label per service, not per pod)."""
        if len(self._callers) >= MAX_CALLERS:
            return OTHER_CALLERS
        label = self._callers[peer_uri] = caller_label(service_of(peer_uri))
        return label


class CountRefusals(_Observer):
    __slots__ = ("_denials", "_limited", "_refusals")

    def __init__(
        self,
        service: str,
        metrics: Metrics | None,
        access_log: AccessLog | None,
        clock: Clock,
        names: MethodNames | None = None,
    ) -> None:
        super().__init__(service, metrics, access_log, clock, names)
        self._denials = metrics.authz_denials if metrics is not None else None
        self._limited = metrics.rate_limited if metrics is not None else None
        self._refusals = metrics.refusals_of("inbound", service) if metrics is not None else {}

    async def __call__(self, call: InboundCall, next: Callable[[InboundCall], Awaitable[Any]]) -> Any:
        start = self._clock()
        try:
            return await next(call)
        except (Unauthenticated, IntentionDenied, RateLimited) as refused:
            self._refused(call, refused, start)
            raise

    def _refused(
        self, call: InboundCall, refused: Unauthenticated | IntentionDenied | RateLimited, start: float
    ) -> None:
        if isinstance(refused, IntentionDenied) and self._denials is not None:
            self._denials.labels(self._service, caller_label(service_of(call.peer_uri))).inc()
        elif isinstance(refused, RateLimited) and self._limited is not None:
            self._limited.labels(self._service, caller_label(service_of(call.peer_uri))).inc()
        if (refusals := self._refusals.get(refused.reason)) is not None:
            refusals.inc()
        # No span of its own (refused before it), and a refusal proves no method exists.
        self._record(call, _name(refused.code()), start, current_span())


class ObserveInbound(_Observer):
    __slots__ = ()

    async def __call__(self, call: InboundCall, next: Callable[[InboundCall], Awaitable[Any]]) -> Any:
        start = self._clock()
        calls = self._calls
        if calls is not None:
            calls.in_flight += 1
        try:
            result = await next(call)
        except BaseException as error:
            self._finish(call, handler_status(error, call.context), start, current_span())
            raise
        context = call.context
        # A stream is served after this stage returns, out of its span: its ids are taken now.
        span = current_span()
        if context is not None and isinstance(result, _STREAMED):  # counted when grpc ends the call
            context.add_done_callback(lambda ended: self._finish(call, ended_status(ended), start, span))
        else:
            self._finish(call, handler_status(None, context), start, span)
        return result

    def _finish(self, call: InboundCall, code: str, start: float, span: SpanContext | None) -> None:
        calls = self._calls
        if calls is not None:
            calls.in_flight -= 1
        self._record(call, code, start, span, answered=proves_method(code))
