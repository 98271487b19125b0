"""Token buckets per caller: a burst at once, then the refill rate, and the exact wait to tell a refused caller."""

from __future__ import annotations

import pytest

from meshlet.resilience.rate_limit import MethodRateLimits, RateLimiter, TokenBucket, default_burst
from tests.unit.resilience import FakeClock

CREATE = "/shop.orders.v1.Orders/Create"
LIST = "/shop.orders.v1.Orders/List"


def taken(bucket: TokenBucket) -> int:
    count = 0
    while bucket.try_take():
        count += 1
    return count


def test_a_new_bucket_allows_its_burst_at_once_then_refuses() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=5, clock=FakeClock())
    assert taken(bucket) == 5
    assert not bucket.try_take()


def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10.0, burst=5, clock=clock)
    taken(bucket)
    clock.advance(0.25)
    assert taken(bucket) == 2  # 2.5 tokens: two whole ones
    clock.advance(3600.0)
    assert taken(bucket) == 5


def test_retry_after_is_the_time_until_the_next_whole_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=4.0, burst=1, clock=clock)
    assert bucket.retry_after_s() == 0.0
    assert bucket.try_take()
    assert bucket.retry_after_s() == pytest.approx(0.25)
    clock.advance(0.1)
    assert bucket.retry_after_s() == pytest.approx(0.15)
    clock.advance(0.15)
    assert bucket.try_take()


def test_a_refused_take_costs_nothing() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, burst=1, clock=clock)
    bucket.try_take()
    for _ in range(100):
        assert not bucket.try_take()
    clock.advance(1.0)
    assert bucket.try_take()


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_bucket_that_could_never_allow_a_call_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, burst, FakeClock())


def test_the_default_burst_is_one_seconds_worth() -> None:
    assert (default_burst(0.5), default_burst(10.0), default_burst(2.5)) == (1, 10, 3)


def test_each_caller_has_its_own_bucket() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=2, clock=FakeClock())
    assert [limiter.check("gateway") for _ in range(2)] == [None, None]
    assert limiter.check("gateway") == pytest.approx(1.0)
    assert limiter.check("billing") is None  # one noisy caller does not starve another


def test_a_flood_of_identities_keeps_at_most_max_keys_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=clock, max_keys=100)
    for n in range(10_000):
        limiter.check(f"caller-{n}")
        clock.advance(0.0001)
    assert len(limiter) == 100


def test_buckets_that_refilled_are_forgotten_when_new_callers_come() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=10.0, burst=1, clock=clock, max_keys=1000)
    for n in range(50):
        limiter.check(f"caller-{n}")
    clock.advance(1.0)  # every bucket is full again: keeping them changes no decision
    limiter.check("newcomer")
    assert len(limiter) == 1


def test_an_active_caller_keeps_its_bucket_while_idle_ones_are_evicted() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=0.001, burst=1, clock=clock, max_keys=3)
    assert limiter.check("noisy") is None
    for n in range(10):
        limiter.check(f"other-{n}")
        assert limiter.check("noisy") is not None  # used between every newcomer: never the least recent


def test_limiter_repr_reads_like_an_admin_line() -> None:
    limiter = RateLimiter(rate_per_s=5.0, burst=10, clock=FakeClock(), max_keys=50)
    limiter.check("gateway")
    assert repr(limiter) == "<RateLimiter 5/s burst 10: 1/50 keys>"


def test_the_most_specific_method_pattern_applies() -> None:
    clock = FakeClock()
    exact, service, anything = (RateLimiter(1.0, 1, clock) for _ in range(3))
    limits = MethodRateLimits({"*": anything, "/shop.orders.v1.Orders/*": service, CREATE: exact})
    assert limits.for_method(CREATE) is exact
    assert limits.for_method(LIST) is service
    assert limits.for_method("/grpc.health.v1.Health/Check") is anything


def test_a_pattern_without_a_limit_exempts_its_methods() -> None:
    limits = MethodRateLimits({"*": RateLimiter(1.0, 1, FakeClock()), "/grpc.health.v1.Health/*": None})
    assert limits.for_method("/grpc.health.v1.Health/Check") is None


def test_unknown_method_names_do_not_grow_the_method_table_without_limit() -> None:
    anything = RateLimiter(1.0, 1, FakeClock())
    limits = MethodRateLimits({"*": anything}, max_methods=10)
    for n in range(1000):
        assert limits.for_method(f"/junk.Svc/M{n}") is anything
    assert len(limits) == 10
