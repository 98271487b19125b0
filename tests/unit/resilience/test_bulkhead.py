from __future__ import annotations

import pytest

from meshlet.resilience.bulkhead import InFlightLimit


def test_calls_beyond_the_limit_are_refused_until_one_finishes() -> None:
    limit = InFlightLimit(2)
    assert limit.try_acquire()
    assert limit.try_acquire()
    assert not limit.try_acquire()
    assert limit.in_flight == 2
    limit.release()
    assert limit.available == 1
    assert limit.try_acquire()


def test_a_refused_call_takes_no_slot() -> None:
    limit = InFlightLimit(1)
    limit.try_acquire()
    for _ in range(3):
        assert not limit.try_acquire()
    limit.release()
    assert limit.in_flight == 0


def test_releasing_a_slot_twice_is_a_bug_that_says_so() -> None:
    limit = InFlightLimit(1)
    limit.try_acquire()
    limit.release()
    with pytest.raises(RuntimeError, match="released twice"):
        limit.release()


def test_bulkhead_repr_shows_its_load() -> None:
    limit = InFlightLimit(100)
    limit.try_acquire()
    assert repr(limit) == "<InFlightLimit 1/100 in flight>"


def test_a_bulkhead_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InFlightLimit(0)
