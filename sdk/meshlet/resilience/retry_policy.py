"""The retry policy as tenacity strategies, in tenacity's own idiom, so that a policy reads as one sentence:

    retry = retry_unless_pushback_refuses(pushback_of) & (
        retry_if_status(on, code_of) & retry_if_safe_to_resend(is_idempotent, may_have_reached_server)
        | retry_if_transparent(code_of, may_have_reached_server))
    stop = stop_after_attempt(clamp_max_attempts(n)) | stop_at_deadline(deadline.remaining, floor_s)
           | stop_when_budget_refuses(budget)                                # last: it spends a retry
    wait = wait_for_pushback_or(wait_full_jitter(base_s, max_s, rng), pushback_of)

tenacity asks `retry` first, then `wait` (which sets ``upcoming_sleep``), then `stop`; `stop_any` stops at the
first strategy that says so. Status codes are names ("UNAVAILABLE"), so no grpc import is needed here.
Before any of this is built, the retry stage asks `first_failure_is_retryable`: most calls never fail, and the
first attempt must not pay for retry machinery.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection

from tenacity import RetryCallState
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from meshlet.resilience.backoff import Pushback, delay_within_deadline, full_jitter_delay
from meshlet.resilience.budget import RetryBudget

MAX_ATTEMPTS = 5
"""gRPC A6: "maxAttempts values greater than 5 are treated as 5". One attempt means retries are off."""

TRANSPARENT_CODE = "UNAVAILABLE"
"""The code of a failure that never left the client (no connection could be made) or that a meshlet server
refused before its handler or app saw it."""

CodeOf = Callable[[BaseException], str | None]
PushbackOf = Callable[[BaseException], Pushback]


def clamp_max_attempts(requested: int) -> int:
    """Attempts in all, first included, between 1 and MAX_ATTEMPTS."""
    return max(1, min(MAX_ATTEMPTS, requested))


def first_failure_is_retryable(
    code: str, on: Collection[str], idempotent: bool, may_have_reached_server: bool, max_attempts: int
) -> str | None:
    """None when a retry may follow the first failed attempt, else why not.

    The reasons, checked in this order: "not_retryable_code" (`code` not in `on`, unless the request provably
    never left and failed UNAVAILABLE: gRPC A6's transparent retry), "not_idempotent" (it may have reached a
    server, and re-sending a method that is not idempotent may execute it twice), "max_attempts" (retries off).
    The budget and the deadline are left to the tenacity strategies.
    """
    transparent = not may_have_reached_server and code == TRANSPARENT_CODE
    if not transparent and code not in on:
        return "not_retryable_code"
    if may_have_reached_server and not idempotent:
        return "not_idempotent"
    if max_attempts < 2:
        return "max_attempts"
    return None


def _failure(retry_state: RetryCallState) -> BaseException | None:
    outcome = retry_state.outcome
    if outcome is None:
        raise RuntimeError("a retry strategy was called before the attempt had an outcome")
    return outcome.exception() if outcome.failed else None


class retry_if_status(retry_base):  # noqa: N801 - tenacity's naming idiom
    """Retry when the attempt failed with one of `codes` (status names; `code_of` reads one from an error)."""

    def __init__(self, codes: Collection[str], code_of: CodeOf) -> None:
        self.codes = frozenset(codes)
        self.code_of = code_of

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = _failure(retry_state)
        return error is not None and self.code_of(error) in self.codes


class retry_if_safe_to_resend(retry_base):  # noqa: N801
    """Retry only what is safe to send again: an idempotent call, or one whose attempt provably never left.

    The most common harm a mesh does is executing a request twice (a charge made twice). Combine with `&`:
    it says whether a retry is safe, not whether it is useful. Both arguments are read at decision time,
    because the call's state changes from one attempt to the next.
    """

    def __init__(self, is_idempotent: Callable[[], bool], may_have_reached_server: Callable[[], bool]) -> None:
        self.is_idempotent = is_idempotent
        self.may_have_reached_server = may_have_reached_server

    def __call__(self, retry_state: RetryCallState) -> bool:
        if _failure(retry_state) is None:
            return False
        return not self.may_have_reached_server() or self.is_idempotent()


class retry_if_transparent(retry_base):  # noqa: N801
    """Retry an attempt that provably never left the client and failed UNAVAILABLE, whatever the retry codes.

    gRPC A6's transparent retry: nothing reached a server, so nothing can run twice, and the next attempt
    may go to another endpoint. It still counts against max attempts, the budget and the deadline.
    """

    def __init__(self, code_of: CodeOf, may_have_reached_server: Callable[[], bool]) -> None:
        self.code_of = code_of
        self.may_have_reached_server = may_have_reached_server

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = _failure(retry_state)
        return error is not None and not self.may_have_reached_server() and self.code_of(error) == TRANSPARENT_CODE


class retry_unless_pushback_refuses(retry_base):  # noqa: N801
    """Retry a failure unless its server said not to (a negative or unparseable pushback, gRPC A6).

    The "do not retry" pushback is a retry decision, not a stop: handled here, it is settled before `stop`
    runs, so no budget is spent on it and tenacity re-raises the server's own error. Combine with `&`.
    """

    def __init__(self, pushback_of: PushbackOf) -> None:
        self.pushback_of = pushback_of

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = _failure(retry_state)
        return error is not None and not self.pushback_of(error).do_not_retry


class stop_at_deadline(stop_base):  # noqa: N801
    """Stop before a sleep would leave less than `floor_s` of the deadline for the next attempt.

    tenacity's ``stop_before_delay`` rule against the call's own deadline (`remaining_s`, e.g.
    ``Deadline.remaining``) rather than tenacity's clock: a retry never sleeps past the deadline.
    """

    def __init__(self, remaining_s: Callable[[], float], floor_s: float) -> None:
        self.remaining_s = remaining_s
        self.floor_s = floor_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not delay_within_deadline(retry_state.upcoming_sleep, self.remaining_s(), self.floor_s)


class stop_when_budget_refuses(stop_base):  # noqa: N801
    """Stop when the upstream's retry budget refuses; otherwise withdraw the retry about to happen.

    It spends a retry when it says "go on", so it must be the last of the stops (``a | b | this``):
    ``stop_any`` stops at the first stop that fires and never asks this one then. `refused` tells the retry
    stage afterwards that the budget, not another stop, ended the call (BudgetExhausted); build one per call.
    """

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self.refused = False

    def __call__(self, retry_state: RetryCallState) -> bool:
        self.refused = not self.budget.try_withdraw()
        return self.refused


class wait_full_jitter(wait_base):  # noqa: N801
    """Full-jitter exponential backoff with an injected rng (see backoff.full_jitter_delay)."""

    def __init__(self, base_s: float, max_s: float, rng: random.Random) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.rng = rng

    def __call__(self, retry_state: RetryCallState) -> float:
        return full_jitter_delay(retry_state.attempt_number, self.base_s, self.max_s, self.rng)


class wait_for_pushback_or(wait_base):  # noqa: N801
    """Wait as long as the server's pushback says, else as long as `fallback` does: the server knows best.

    A "do not retry" pushback gets the fallback's wait here; `retry_unless_pushback_refuses` is what stops it.
    """

    def __init__(self, fallback: wait_base, pushback_of: PushbackOf) -> None:
        self.fallback = fallback
        self.pushback_of = pushback_of

    def __call__(self, retry_state: RetryCallState) -> float:
        error = _failure(retry_state)
        if error is not None:
            after = self.pushback_of(error).retry_after_s
            if after is not None:
                return after
        return self.fallback(retry_state)
