"""Stage: retry failed attempts within the deadline and the retry budget. The seam of the pipeline: the stages
above run once per call, the stages below once per attempt.

The first attempt runs straight through, with no retry machinery: most calls succeed, and they must not pay
for what only a retry needs. Only when a first attempt fails in a way that may be retried does the stage hand
the call to tenacity, whose strategies (meshlet.resilience.retry_policy) decide every later step: retryable
codes only; a call that may have reached a server is re-sent only when its method is idempotent; full-jitter
backoff, or the server's pushback; never sleeping past the deadline; at most max_attempts; and each retry paid
for from the upstream's retry budget, so an outage cannot multiply the load on it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from meshlet.call import Call
from meshlet.config import RetryPolicy
from meshlet.errors import BudgetExhausted, ErrorReason, MeshError, error_info
from meshlet.events import EventBus, RetryNotAttempted, RetryScheduled
from meshlet.resilience.backoff import parse_pushback
from meshlet.resilience.budget import RetryBudget
from meshlet.resilience.retry_policy import (
    clamp_max_attempts,
    first_failure_is_retryable,
    retry_if_safe_to_resend,
    retry_if_status,
    retry_if_transparent,
    retry_unless_pushback_refuses,
    stop_at_deadline,
    stop_when_budget_refuses,
    wait_for_pushback_or,
    wait_full_jitter,
)

PUSHBACK_KEY = "grpc-retry-pushback-ms"
Sleep = Callable[[float], Awaitable[None]]


def code_of(error: BaseException) -> str | None:
    if isinstance(error, grpc.aio.AioRpcError) and not isinstance(error, MeshError):
        code: grpc.StatusCode = error.code()
        name: str = code.name
        return name
    return None


def upstream_failed(error: BaseException) -> bool:
    """The server's handler failed because its own upstream call did (UPSTREAM_FAILED): the mesh below it has
    retried already, and retrying here too would multiply the load on a failing upstream."""
    if not isinstance(error, grpc.aio.AioRpcError) or isinstance(error, MeshError):
        return False
    info = error_info(error)
    return info is not None and info.reason == ErrorReason.UPSTREAM_FAILED


def invited_by_pushback(error: BaseException) -> bool:
    """RESOURCE_EXHAUSTED with a pushback: the server (a rate limit, a full bulkhead) asks for a retry later."""
    return code_of(error) == "RESOURCE_EXHAUSTED" and pushback_of(error).retry_after_s is not None


def pushback_of(error: BaseException) -> Any:
    value = None
    if isinstance(error, grpc.aio.AioRpcError):
        for key, item in error.trailing_metadata() or ():
            if key == PUSHBACK_KEY:
                value = item
    return parse_pushback(value)


class RetryWithinBudget:
    __slots__ = ("_budget", "_events", "_floor_s", "_max_attempts", "_on", "_policy", "_rng", "_sleep")

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        events: EventBus,
        *,
        floor_s: float,
        rng: random.Random,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._policy = policy
        self._budget = budget
        self._events = events
        self._floor_s = floor_s
        self._rng = rng
        self._sleep = sleep
        self._on = frozenset(policy.on)
        self._max_attempts = clamp_max_attempts(policy.max_attempts)

    async def __call__(self, call: Call, next: Callable[[Call], Awaitable[Any]]) -> Any:
        self._budget.record_request()
        call.attempt = 1
        try:
            return await next(call)
        except MeshError:
            raise  # meshlet's own refusals (no endpoint, all circuits open) fail fast
        except grpc.aio.AioRpcError as error:
            code = error.code().name
            on = self._on | {code} if invited_by_pushback(error) else self._on
            why = (
                "replay_buffer_overflowed"
                if not self._can_replay(call)
                else first_failure_is_retryable(
                    code, on, call.method.idempotent, call.may_have_reached_server, self._max_attempts
                )
            )
            if why is None and upstream_failed(error):
                why = "upstream_failed"
            if why is not None:
                if why != "not_retryable_code":
                    self._events.emit(RetryNotAttempted(call.upstream, call.method.path, 1, code, why))
                raise
            first = error
        return await self._retry(call, next, first)

    @staticmethod
    def _can_replay(call: Call) -> bool:
        """A client stream can be re-sent only while every message it sent is still buffered (gRPC A6)."""
        return not call.method.client_streaming or bool(call.request.can_replay())

    async def _retry(self, call: Call, next: Callable[[Call], Awaitable[Any]], first: BaseException) -> Any:
        assert call.deadline is not None
        policy = self._policy
        tried = call.tried = []
        budget_stop = stop_when_budget_refuses(self._budget)

        def reached_server() -> bool:
            return call.may_have_reached_server

        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=(
                stop_after_attempt(self._max_attempts)
                | stop_at_deadline(call.deadline.remaining, self._floor_s)
                | budget_stop  # last: it spends a retry from the budget when it lets one through
            ),
            wait=wait_for_pushback_or(
                wait_full_jitter(policy.backoff_base, policy.backoff_max, self._rng), pushback_of
            ),
            retry=retry_unless_pushback_refuses(pushback_of)
            & retry_if_exception(lambda _error: self._can_replay(call))
            & retry_if_exception(lambda error: not upstream_failed(error))
            & (
                (retry_if_status(self._on, code_of) | retry_if_exception(invited_by_pushback))
                & retry_if_safe_to_resend(lambda: call.method.idempotent, reached_server)
                | retry_if_transparent(code_of, reached_server)
            ),
            before_sleep=lambda state: self._scheduled(call, state),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number == 1:
                        raise first  # tenacity decides from the first attempt's outcome, which already happened
                    if call.endpoint is not None:
                        tried.append(call.endpoint)
                    call.attempt = attempt.retry_state.attempt_number
                    call.may_have_reached_server = False
                    return await next(call)
        except grpc.aio.AioRpcError as error:
            if isinstance(error, MeshError):
                raise
            code = error.code().name
            if not budget_stop.refused:
                why = self._why_not_retried(call, error)
                self._events.emit(RetryNotAttempted(call.upstream, call.method.path, call.attempt, code, why))
                raise
            self._events.emit(RetryNotAttempted(call.upstream, call.method.path, call.attempt, code, "budget"))
            raise BudgetExhausted(
                f"{error.details()} (not retried: the retry budget of {call.upstream} is spent, "
                f"{policy.budget_ratio:.0%} of requests plus {policy.budget_min_per_s:g}/s; "
                f"the upstream is failing, check its health)",
                code=error.code(),
                metadata={
                    "upstream": call.upstream,
                    "attempts": str(call.attempt),
                    "endpoints": ",".join(str(e) for e in [*tried, call.endpoint] if e is not None),
                },
            ) from error
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _why_not_retried(self, call: Call, error: grpc.aio.AioRpcError) -> str:
        """The reason the last failed attempt was the last one, for the RetryNotAttempted event."""
        if call.attempt >= self._max_attempts:
            return "max_attempts"
        if not self._can_replay(call):
            return "replay_buffer_overflowed"
        if pushback_of(error).do_not_retry:
            return "pushback"
        if upstream_failed(error):
            return "upstream_failed"
        code = error.code().name
        retryable = code in self._on or invited_by_pushback(error)
        if not retryable and not (code == "UNAVAILABLE" and not call.may_have_reached_server):
            return "not_retryable_code"
        if call.may_have_reached_server and not call.method.idempotent:
            return "not_idempotent"
        return "deadline"

    def _scheduled(self, call: Call, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        code = code_of(error) if error is not None else None
        delay = state.upcoming_sleep
        self._events.emit(RetryScheduled(call.upstream, call.method.path, state.attempt_number, delay, code or ""))
