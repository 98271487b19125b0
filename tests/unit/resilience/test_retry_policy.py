from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from tenacity import RetryCallState, Retrying, stop_after_attempt
from tenacity.wait import wait_fixed

from meshlet.resilience.backoff import Pushback, parse_pushback
from meshlet.resilience.budget import RetryBudget
from meshlet.resilience.retry_policy import (
    MAX_ATTEMPTS,
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
from tests.unit.resilience import FakeClock


class Failed(Exception):
    """A failed attempt as the pipeline sees it: a status name, whether it left, and any server pushback."""

    def __init__(self, code: str, *, reached: bool = True, pushback: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.reached = reached
        self.pushback = pushback


def code_of(error: BaseException) -> str | None:
    return error.code if isinstance(error, Failed) else None


def pushback_of(error: BaseException) -> Pushback:
    return parse_pushback(error.pushback if isinstance(error, Failed) else None)


def make_retry_state(attempt: int, error: BaseException | None = None, upcoming_sleep: float = 0.0) -> RetryCallState:
    """tenacity's own test helper, for meshlet's strategies: the state after attempt `attempt` ended."""
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    if error is None:
        state.set_result("reply")
    else:
        state.set_exception((type(error), error, None))
    state.upcoming_sleep = upcoming_sleep
    return state


# ---------------------------------------------------------------- one strategy at a time


def test_retry_if_status_retries_only_the_listed_codes() -> None:
    retry = retry_if_status({"UNAVAILABLE"}, code_of)
    assert retry(make_retry_state(1, Failed("UNAVAILABLE")))
    assert not retry(make_retry_state(1, Failed("INVALID_ARGUMENT")))
    assert not retry(make_retry_state(1, ValueError("not an RPC error")))
    assert not retry(make_retry_state(1))


@pytest.mark.parametrize(
    ("idempotent", "reached", "safe"),
    [(True, True, True), (True, False, True), (False, False, True), (False, True, False)],
)
def test_retry_if_safe_to_resend(idempotent: bool, reached: bool, safe: bool) -> None:
    retry = retry_if_safe_to_resend(lambda: idempotent, lambda: reached)
    assert retry(make_retry_state(1, Failed("UNAVAILABLE"))) is safe
    assert not retry(make_retry_state(1))


def test_retry_if_transparent_takes_only_unavailable_that_never_left() -> None:
    reached = False
    retry = retry_if_transparent(code_of, lambda: reached)
    assert retry(make_retry_state(1, Failed("UNAVAILABLE")))
    assert not retry(make_retry_state(1, Failed("DEADLINE_EXCEEDED")))
    reached = True
    assert not retry(make_retry_state(1, Failed("UNAVAILABLE")))


def test_retry_unless_pushback_refuses() -> None:
    retry = retry_unless_pushback_refuses(pushback_of)
    assert retry(make_retry_state(1, Failed("UNAVAILABLE")))
    assert retry(make_retry_state(1, Failed("UNAVAILABLE", pushback="100")))
    assert not retry(make_retry_state(1, Failed("UNAVAILABLE", pushback="-1")))
    assert not retry(make_retry_state(1))


def test_stop_at_deadline_looks_at_the_sleep_about_to_happen() -> None:
    stop = stop_at_deadline(lambda: 0.5, floor_s=0.01)
    assert not stop(make_retry_state(1, Failed("UNAVAILABLE"), upcoming_sleep=0.1))
    assert stop(make_retry_state(1, Failed("UNAVAILABLE"), upcoming_sleep=0.495))
    assert stop(make_retry_state(1, Failed("UNAVAILABLE"), upcoming_sleep=2.0))


def test_stop_when_budget_refuses_withdraws_one_retry_per_go_ahead() -> None:
    budget = RetryBudget(ratio=0.0, min_per_s=0.2, ttl_s=10.0, clock=FakeClock())  # two retries in all
    stop = stop_when_budget_refuses(budget)
    state = make_retry_state(1, Failed("UNAVAILABLE"))
    assert not stop(state)
    assert not stop(state)
    assert not stop.refused
    assert stop(state)
    assert stop.refused


def test_wait_full_jitter_draws_from_the_doubling_window() -> None:
    wait = wait_full_jitter(0.025, 1.0, random.Random(5))
    for attempt, ceiling in [(1, 0.025), (2, 0.05), (3, 0.1), (9, 1.0)]:
        assert 0.0 <= wait(make_retry_state(attempt, Failed("UNAVAILABLE"))) <= ceiling


def test_server_pushback_wins_over_the_backoff() -> None:
    wait = wait_for_pushback_or(wait_fixed(0.05), pushback_of)
    assert wait(make_retry_state(1, Failed("UNAVAILABLE", pushback="300"))) == 0.3
    assert wait(make_retry_state(1, Failed("UNAVAILABLE"))) == 0.05
    assert wait(make_retry_state(1, Failed("UNAVAILABLE", pushback="nope"))) == 0.05  # the retry strategy stops it


@pytest.mark.parametrize(
    ("code", "idempotent", "reached", "max_attempts", "why"),
    [
        ("UNAVAILABLE", True, True, 3, None),
        ("INVALID_ARGUMENT", True, True, 3, "not_retryable_code"),
        ("UNAVAILABLE", False, True, 3, "not_idempotent"),
        ("UNAVAILABLE", False, False, 3, None),  # never left: nothing can run twice
        ("UNAVAILABLE", True, True, 1, "max_attempts"),
        ("RESOURCE_EXHAUSTED", True, True, 3, None),  # listed in `on` below
        ("DEADLINE_EXCEEDED", True, False, 3, "not_retryable_code"),  # transparent retry is for UNAVAILABLE only
    ],
)
def test_first_failure_decides_without_retry_machinery(
    code: str, idempotent: bool, reached: bool, max_attempts: int, why: str | None
) -> None:
    on = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
    assert first_failure_is_retryable(code, on, idempotent, reached, max_attempts) == why


def test_connection_refused_is_retried_even_when_unavailable_is_not_a_retry_code() -> None:
    assert first_failure_is_retryable("UNAVAILABLE", frozenset(), False, False, 3) is None
    assert first_failure_is_retryable("UNAVAILABLE", frozenset(), True, True, 3) == "not_retryable_code"


@pytest.mark.parametrize(("requested", "allowed"), [(0, 1), (1, 1), (3, 3), (5, 5), (10, MAX_ATTEMPTS)])
def test_max_attempts_is_clamped_as_grpc_does(requested: int, allowed: int) -> None:
    assert clamp_max_attempts(requested) == allowed


# ---------------------------------------------------------------- the policy as the retry stage composes it


@dataclass
class Run:
    """One call driven through tenacity with meshlet's strategies, a fake clock and scripted attempt outcomes."""

    outcomes: Sequence[Failed | str]
    on: frozenset[str] = frozenset({"UNAVAILABLE"})
    max_attempts: int = 3
    idempotent: bool = True
    deadline_s: float = 5.0
    floor_s: float = 0.01
    budget: RetryBudget | None = None
    clock: FakeClock = field(default_factory=FakeClock)
    sleeps: list[float] = field(default_factory=list)
    attempts: int = 0
    reached: bool = False
    budget_stop: stop_when_budget_refuses = field(init=False)

    def __post_init__(self) -> None:
        self.budget_stop = stop_when_budget_refuses(self.budget or RetryBudget(clock=self.clock))

    def go(self) -> str:
        deadline_at = self.clock.now + self.deadline_s
        retrying = Retrying(
            retry=retry_unless_pushback_refuses(pushback_of)
            & (
                retry_if_status(self.on, code_of)
                & retry_if_safe_to_resend(lambda: self.idempotent, lambda: self.reached)
                | retry_if_transparent(code_of, lambda: self.reached)
            ),
            stop=stop_after_attempt(clamp_max_attempts(self.max_attempts))
            | stop_at_deadline(lambda: max(0.0, deadline_at - self.clock.now), self.floor_s)
            | self.budget_stop,
            wait=wait_for_pushback_or(wait_full_jitter(0.025, 1.0, random.Random(11)), pushback_of),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(self._attempt)

    def _attempt(self) -> str:
        outcome = self.outcomes[min(self.attempts, len(self.outcomes) - 1)]
        self.attempts += 1
        self.clock.advance(0.005)  # the attempt itself takes a little time
        if isinstance(outcome, Failed):
            self.reached = outcome.reached
            raise outcome
        return outcome

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)


def test_transient_failure_is_retried_and_succeeds() -> None:
    run = Run([Failed("UNAVAILABLE"), "ok"])
    assert run.go() == "ok"
    assert run.attempts == 2


def test_retries_stop_at_max_attempts_clamped_to_five() -> None:
    run = Run([Failed("UNAVAILABLE")], max_attempts=10, deadline_s=60.0)
    with pytest.raises(Failed):
        run.go()
    assert run.attempts == 5


def test_retry_never_sleeps_past_deadline() -> None:
    for deadline_s in (0.05, 0.1, 0.3, 0.7):
        run = Run([Failed("UNAVAILABLE")], max_attempts=5, deadline_s=deadline_s, floor_s=0.02)
        start = run.clock.now
        with pytest.raises(Failed):
            run.go()
        assert run.sleeps  # retries happened; each left at least the floor for its attempt
        assert run.clock.now - start <= deadline_s


def test_a_deadline_too_close_for_any_retry_gets_none() -> None:
    run = Run([Failed("UNAVAILABLE"), "ok"], deadline_s=0.012, floor_s=0.01)
    with pytest.raises(Failed):
        run.go()
    assert run.attempts == 1
    assert run.sleeps == []


def test_budget_exhaustion_stops_retries() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_s=0.1, ttl_s=10.0, clock=clock)  # one retry in the window
    first = Run([Failed("UNAVAILABLE")], clock=clock, budget=budget)
    with pytest.raises(Failed):
        first.go()
    assert first.attempts == 2
    assert first.budget_stop.refused
    second = Run([Failed("UNAVAILABLE"), "ok"], clock=clock, budget=budget)
    with pytest.raises(Failed):
        second.go()
    assert second.attempts == 1


def test_budget_is_not_spent_when_another_stop_ends_the_call() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_s=1.0, ttl_s=10.0, clock=clock)
    run = Run([Failed("UNAVAILABLE")], max_attempts=3, clock=clock, budget=budget)
    with pytest.raises(Failed):
        run.go()
    assert budget.remaining == 8.0  # two retries taken; the third stop (max attempts) took nothing
    assert not run.budget_stop.refused


def test_server_pushback_sets_the_wait() -> None:
    run = Run([Failed("UNAVAILABLE", pushback="250"), "ok"])
    assert run.go() == "ok"
    assert run.sleeps == [0.25]


def test_server_saying_do_not_retry_is_obeyed_without_spending_budget() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_s=1.0, ttl_s=10.0, clock=clock)
    run = Run([Failed("UNAVAILABLE", pushback="-1"), "ok"], clock=clock, budget=budget)
    with pytest.raises(Failed):
        run.go()
    assert run.attempts == 1
    assert budget.remaining == 10.0


def test_pushback_longer_than_the_deadline_ends_the_call() -> None:
    run = Run([Failed("UNAVAILABLE", pushback="5000"), "ok"], deadline_s=1.0)
    with pytest.raises(Failed):
        run.go()
    assert run.attempts == 1


def test_non_idempotent_call_is_not_resent_after_reaching_a_server() -> None:
    run = Run([Failed("UNAVAILABLE", reached=True), "ok"], idempotent=False)
    with pytest.raises(Failed):
        run.go()
    assert run.attempts == 1


def test_non_idempotent_call_that_never_left_is_retried() -> None:
    run = Run([Failed("UNAVAILABLE", reached=False), Failed("UNAVAILABLE", reached=False), "ok"], idempotent=False)
    assert run.go() == "ok"
    assert run.attempts == 3


def test_non_idempotent_call_stops_once_a_retry_reaches_a_server() -> None:
    run = Run([Failed("UNAVAILABLE", reached=False), Failed("UNAVAILABLE", reached=True), "ok"], idempotent=False)
    with pytest.raises(Failed):
        run.go()
    assert run.attempts == 2


def test_application_errors_are_never_retried() -> None:
    run = Run([Failed("INVALID_ARGUMENT"), "ok"])
    with pytest.raises(Failed):
        run.go()
    assert run.attempts == 1
