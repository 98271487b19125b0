from __future__ import annotations

import pytest

from meshlet.resilience.budget import RetryBudget
from tests.unit.resilience import FakeClock


def spend(budget: RetryBudget) -> int:
    taken = 0
    while budget.try_withdraw():
        taken += 1
    return taken


def test_a_quiet_caller_may_still_retry_up_to_the_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=10.0, ttl_s=10.0, clock=FakeClock())
    assert spend(budget) == 100  # 10 retries/s over a 10 s window, with no requests at all


def test_each_request_earns_a_fraction_of_a_retry() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=0.0, ttl_s=10.0, clock=FakeClock())
    for _ in range(50):
        budget.record_request()
    assert spend(budget) == 10


def test_a_refused_withdrawal_takes_nothing() -> None:
    budget = RetryBudget(ratio=0.5, min_per_s=0.0, clock=FakeClock())
    budget.record_request()
    assert not budget.try_withdraw()  # half a retry is not a retry
    budget.record_request()
    assert budget.try_withdraw()


def test_retries_spent_come_back_once_they_leave_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_s=1.0, ttl_s=10.0, clock=clock)
    assert spend(budget) == 10
    clock.advance(5.0)
    assert not budget.try_withdraw()
    clock.advance(5.0)
    assert spend(budget) == 10


def test_old_requests_stop_earning_retries() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_s=0.0, ttl_s=10.0, clock=clock)
    for _ in range(30):
        budget.record_request()
    clock.advance(11.0)
    assert budget.remaining == 0.0
    assert not budget.try_withdraw()


def test_an_outage_cannot_multiply_load_beyond_ratio_plus_floor() -> None:
    """100 calls/s for a minute, every attempt failing, each call willing to try 5 times."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_s=10.0, ttl_s=10.0, clock=clock)
    calls = attempts = 0
    for _ in range(6000):
        budget.record_request()
        calls += 1
        attempts += 1
        for _retry in range(4):
            if not budget.try_withdraw():
                break
            attempts += 1
        clock.advance(0.01)
    # Steady state: 100 requests/s may cause at most 20 + 10 retries/s; the first window adds the floor's reserve.
    assert attempts <= calls * 1.2 + 10.0 * 60 + 100
    assert attempts >= calls * 1.2 + 10.0 * 60 - 100  # the budget is a cap, not a ban: retries did happen


def test_budget_repr_reads_like_an_admin_line() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=10.0, ttl_s=10.0, clock=FakeClock())
    for _ in range(60):
        budget.record_request()
    for _ in range(100):
        budget.try_withdraw()
    assert repr(budget) == "<RetryBudget 12.0/112.0 retries left, ratio=0.2>"
    assert budget.allowed == 112.0
    assert budget.remaining == 12.0


def test_a_long_silence_resets_the_whole_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, ttl_s=10.0, clock=clock)
    for _ in range(100):
        budget.record_request()
    spend(budget)
    clock.advance(3600.0)
    assert repr(budget) == "<RetryBudget 10.0/10.0 retries left, ratio=0.2>"


@pytest.mark.parametrize(
    "kwargs", [{"ratio": -0.1}, {"ratio": 1001.0}, {"min_per_s": -1.0}, {"ttl_s": 0.0}], ids=lambda k: next(iter(k))
)
def test_a_nonsensical_budget_is_refused_at_construction(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="retry budget"):
        RetryBudget(**kwargs, clock=FakeClock())
