"""StateLog and WindowedLog: one line per state change, held to one line per kind per window, with counts that
add up to what happened."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from meshlet.endpoints import Endpoint
from meshlet.events import BreakerClosed, BreakerHalfOpened, BreakerOpened, EventBus, RetryNotAttempted, RetryScheduled
from meshlet.telemetry.state_log import StateLog
from tests.support.processes import eventually

ENDPOINT = Endpoint("10.0.0.2", 50051)


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, Any, int]]:
    return [
        (record.event, getattr(record, "reason", None), record.count)  # type: ignore[attr-defined]
        for record in caplog.records
        if record.name == "meshlet.state"
    ]


async def test_a_flapping_breaker_logs_each_change_once_then_one_line_per_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    state_log = StateLog(window_s=60)
    state_log.watch(bus)
    with caplog.at_level(logging.INFO, logger="meshlet.state"):
        for _ in range(3):
            bus.emit(BreakerOpened("inventory", ENDPOINT, 1.0))
            bus.emit(BreakerHalfOpened("inventory", ENDPOINT))
        bus.emit(BreakerClosed("inventory", ENDPOINT))
        assert lines(caplog) == [
            ("breaker_opened", "consecutive failures reached upstreams.inventory.breaker.failures", 1),
            ("breaker_half_opened", "its reset timeout passed", 1),
            ("breaker_closed", "its probe succeeded", 1),
        ]
        state_log.flush()
    assert lines(caplog)[3:] == [
        ("breaker_opened", "its half-open probe failed", 2),  # the last one's reason, and how many
        ("breaker_half_opened", "its reset timeout passed", 2),
    ]


async def test_a_dry_retry_budget_is_logged_when_it_runs_dry_and_when_it_lets_a_retry_through_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    StateLog().watch(bus)
    with caplog.at_level(logging.INFO, logger="meshlet.state"):
        bus.emit(RetryScheduled("inventory", "/m", 1, 0.01, "UNAVAILABLE"))  # not dry: nothing to say
        for _ in range(3):
            bus.emit(RetryNotAttempted("inventory", "/m", 1, "UNAVAILABLE", "budget"))
        bus.emit(RetryNotAttempted("inventory", "/m", 1, "UNAVAILABLE", "max_attempts"))  # not the budget's doing
        bus.emit(RetryScheduled("inventory", "/m", 1, 0.01, "UNAVAILABLE"))
    records = [record for record in caplog.records if record.name == "meshlet.state"]
    assert [(r.event, r.levelname) for r in records] == [  # type: ignore[attr-defined]
        ("retry_budget_exhausted", "WARNING"),
        ("retry_budget_recovered", "INFO"),
    ]
    assert records[1].refused == 3  # type: ignore[attr-defined]


async def test_a_window_with_repeats_writes_their_line_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    StateLog(window_s=0.05).watch(bus)
    with caplog.at_level(logging.INFO, logger="meshlet.state"):
        for _ in range(4):
            bus.emit(BreakerClosed("inventory", ENDPOINT))
        await eventually(lambda: len(lines(caplog)) == 2, "the window's line", 10)
    assert lines(caplog) == [
        ("breaker_closed", "its probe succeeded", 1),
        ("breaker_closed", "its probe succeeded", 3),
    ]
