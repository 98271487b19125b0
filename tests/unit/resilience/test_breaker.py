from __future__ import annotations

import random

import pytest

from meshlet.endpoints import Endpoint
from meshlet.events import BreakerClosed, BreakerHalfOpened, BreakerOpened, Event
from meshlet.resilience.breaker import EndpointBreaker, is_infrastructure_failure
from tests.unit.resilience import FakeClock

ENDPOINT = Endpoint("127.0.0.1", 5001)


def make(clock: FakeClock, **kwargs: float) -> tuple[EndpointBreaker, list[Event]]:
    """A breaker for 127.0.0.1:5001 and the list its events land in."""
    events: list[Event] = []
    breaker = EndpointBreaker(
        "inventory",
        ENDPOINT,
        clock=clock,
        rng=random.Random(1),
        on_event=events.append,
        **kwargs,  # type: ignore[arg-type]
    )
    return breaker, events


def trip(breaker: EndpointBreaker, failures: int = 5) -> None:
    for _ in range(failures):
        breaker.record_failure()


def test_breaker_opens_after_consecutive_infrastructure_failures() -> None:
    clock = FakeClock()
    breaker, events = make(clock)
    trip(breaker, 4)
    assert breaker.admits()
    assert events == []
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.admits()
    assert len(events) == 1
    opened = events[0]
    assert isinstance(opened, BreakerOpened)
    assert (opened.upstream, opened.endpoint) == ("inventory", ENDPOINT)
    assert 8.0 <= opened.reopen_after_s <= 12.0  # 10 s, jittered by 20 %
    assert breaker.reopen_at == pytest.approx(clock.now + opened.reopen_after_s)


def test_a_success_resets_the_failure_count() -> None:
    breaker, _ = make(FakeClock())
    trip(breaker, 4)
    breaker.record_success()
    assert breaker.failures == 0
    trip(breaker, 4)
    assert breaker.state == "closed"


def test_open_breaker_lets_exactly_one_probe_through_after_the_reset_timeout() -> None:
    clock = FakeClock()
    breaker, events = make(clock)
    trip(breaker)
    assert breaker.reopen_at is not None
    clock.now = breaker.reopen_at - 0.001
    assert not breaker.admits()
    clock.now = breaker.reopen_at
    assert breaker.admits()
    assert breaker.state == "half_open"
    assert isinstance(events[-1], BreakerHalfOpened)
    assert not breaker.admits()  # concurrent callers wait for the probe's verdict
    assert not breaker.admits()


def test_successful_probe_closes_the_breaker() -> None:
    clock = FakeClock()
    breaker, events = make(clock)
    trip(breaker)
    clock.advance(12.0)
    assert breaker.admits()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.reopen_at is None
    assert breaker.failures == 0
    assert [type(e) for e in events] == [BreakerOpened, BreakerHalfOpened, BreakerClosed]
    assert all(breaker.admits() for _ in range(3))


def test_failed_probes_back_the_reset_timeout_off_up_to_the_cap() -> None:
    clock = FakeClock()
    breaker, events = make(clock, reset_timeout_s=1.0, reset_timeout_max_s=60.0)
    trip(breaker)
    for _ in range(9):
        clock.advance(61.0)
        assert breaker.admits()
        breaker.record_failure()
    timeouts = [e.reopen_after_s for e in events if isinstance(e, BreakerOpened)]
    bases = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert len(timeouts) == len(bases)
    for timeout, base in zip(timeouts, bases, strict=True):
        assert 0.8 * base <= timeout <= min(60.0, 1.2 * base)


def test_reset_timeout_returns_to_the_base_after_recovery() -> None:
    clock = FakeClock()
    breaker, events = make(clock, reset_timeout_s=1.0)
    trip(breaker)
    for _ in range(3):
        clock.advance(61.0)
        breaker.admits()
        breaker.record_failure()
    clock.advance(61.0)
    breaker.admits()
    breaker.record_success()
    trip(breaker)
    last = events[-1]
    assert isinstance(last, BreakerOpened)
    assert 0.8 <= last.reopen_after_s <= 1.2


def test_outcomes_of_attempts_admitted_before_opening_are_ignored() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    trip(breaker)
    reopen_at = breaker.reopen_at
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state == "open"
    assert breaker.reopen_at == reopen_at


def test_cancelled_probe_frees_the_slot_for_another() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    trip(breaker)
    clock.advance(12.0)
    probe = object()
    assert breaker.admits(probe)
    assert not breaker.admits(object())
    breaker.record_cancelled(probe)
    assert breaker.admits(object())
    assert breaker.state == "half_open"


def test_only_the_probes_own_cancellation_frees_the_half_open_slot() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    before_opening = object()
    assert breaker.admits(before_opening)  # an attempt sent while closed, still in flight
    trip(breaker)
    clock.advance(12.0)
    probe = object()
    assert breaker.admits(probe)

    breaker.record_cancelled(before_opening)
    assert not breaker.admits(object())  # the probe is still out: nobody else goes

    breaker.record_cancelled(probe)
    assert breaker.admits(object())
    assert breaker.state == "half_open"


def test_a_probe_that_never_reports_is_presumed_lost_after_a_reset_timeout() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    trip(breaker)
    clock.advance(12.0)
    assert breaker.admits()
    clock.advance(5.0)
    assert not breaker.admits()
    clock.advance(8.0)
    assert breaker.admits()


def test_timing_follows_the_injected_clock_not_the_wall_clock() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    trip(breaker)
    assert breaker.is_refusing()
    clock.advance(3600.0)  # no real time passes at all
    assert not breaker.is_refusing()
    assert breaker.admits()


def test_breaker_repr_shows_state_failures_and_reopen_time() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, jitter=0.0)
    assert repr(breaker) == "<EndpointBreaker 127.0.0.1:5001 closed, 0 failures>"
    trip(breaker, 3)
    assert repr(breaker) == "<EndpointBreaker 127.0.0.1:5001 closed, 3 failures>"
    trip(breaker, 2)
    clock.advance(5.8)
    assert repr(breaker) == "<EndpointBreaker 127.0.0.1:5001 open, 5 failures, reopens in 4.2s>"
    clock.advance(4.2)
    breaker.admits()
    assert repr(breaker) == "<EndpointBreaker 127.0.0.1:5001 half_open, 5 failures, probe in flight>"


@pytest.mark.parametrize(
    ("code", "reached_server", "counts"),
    [
        ("UNAVAILABLE", False, True),
        ("UNAVAILABLE", True, True),
        ("INTERNAL", True, True),
        ("DEADLINE_EXCEEDED", True, True),
        ("DATA_LOSS", True, True),
        ("UNKNOWN", False, True),
        ("UNKNOWN", True, False),
        ("INVALID_ARGUMENT", True, False),
        ("NOT_FOUND", True, False),
        ("ALREADY_EXISTS", True, False),
        ("PERMISSION_DENIED", True, False),
        ("FAILED_PRECONDITION", True, False),
        ("OUT_OF_RANGE", True, False),
        ("UNAUTHENTICATED", True, False),
        ("ABORTED", True, False),
        ("UNIMPLEMENTED", True, False),
        ("CANCELLED", True, False),
        ("CANCELLED", False, False),
        ("RESOURCE_EXHAUSTED", True, False),
        ("OK", True, False),
    ],
)
def test_only_infrastructure_failures_count_against_an_endpoint(code: str, reached_server: bool, counts: bool) -> None:
    assert is_infrastructure_failure(code, reached_server) is counts


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failures": 0},
        {"reset_timeout_s": 0.0},
        {"reset_timeout_s": 90.0, "reset_timeout_max_s": 60.0},
        {"jitter": 1.0},
    ],
)
def test_a_nonsensical_breaker_is_refused_at_construction(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="breaker"):
        make(FakeClock(), **kwargs)


def test_event_listeners_see_the_breaker_in_its_new_state() -> None:
    """A listener (the upstream recomputing its admitted set) may use the breaker when told of a change."""
    clock = FakeClock()
    seen: list[tuple[str, bool]] = []
    breaker = EndpointBreaker(
        "inventory",
        ENDPOINT,
        clock=clock,
        rng=random.Random(1),
        on_event=lambda event: seen.append((breaker.state, breaker.admits())),
    )
    trip(breaker)
    clock.advance(12.0)
    assert breaker.admits()
    breaker.record_success()
    assert seen == [("open", False), ("half_open", False), ("closed", True)]
