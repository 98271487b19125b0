"""Fault knobs: the decision per call (scripted rng), parsing and validation, and the faults file's rules."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from meshlet_shop.faults import Decision, FaultInjector, Faults, FaultsError, parse_faults


class Scripted(random.Random):
    def __init__(self, *draws: float) -> None:
        super().__init__()
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def test_no_faults_by_default() -> None:
    assert Faults().decide(Scripted(0.0)) == Decision(0.0, None)


def test_error_rate_is_the_share_of_draws_below_it() -> None:
    faults = Faults(error_rate=0.3, error_code="RESOURCE_EXHAUSTED", latency_ms=250)
    assert faults.decide(Scripted(0.29)) == Decision(0.25, "RESOURCE_EXHAUSTED")
    assert faults.decide(Scripted(0.3)) == Decision(0.25, None)


def test_rate_one_always_fails() -> None:
    rng = random.Random(7)
    assert all(Faults(error_rate=1.0).decide(rng).code == "UNAVAILABLE" for _ in range(100))


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_rate": "half"}, "error_rate"),
        ({"error_code": "OK"}, "error_code"),
        ({"error_code": "BROKEN"}, "error_code"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency": 5}, "latency"),
    ],
)
def test_bad_knobs_are_named(knobs: dict[str, object], field: str) -> None:
    with pytest.raises(FaultsError) as error:
        parse_faults(knobs, Faults())
    assert error.value.field == field


def test_a_file_overrides_only_the_knobs_it_sets() -> None:
    base = Faults(error_rate=0.1, latency_ms=5)
    assert parse_faults({"error_code": "internal"}, base) == Faults(0.1, "INTERNAL", 5)


def test_the_injector_follows_the_file_and_keeps_the_last_good_faults(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    base = Faults(latency_ms=1)
    injector = FaultInjector(base, instance="i-1", path=path)
    assert not injector.reload()  # no file: the flags' faults
    path.write_text(json.dumps({"error_rate": 0.5}))
    assert injector.reload()
    assert injector.current == Faults(0.5, "UNAVAILABLE", 1)
    path.write_text("{not json")
    assert not injector.reload()  # an edit in progress changes nothing
    assert injector.current.error_rate == 0.5
    path.unlink()
    assert injector.reload()
    assert injector.current == base


def test_an_empty_file_is_ignored_not_read_as_no_faults(tmp_path: Path) -> None:
    """An empty file is what a reader sees halfway through a write: it must not reset the faults."""
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"error_rate": 0.5}))
    injector = FaultInjector(Faults(), instance="i-1", path=path)
    assert injector.reload()
    path.write_text("")
    assert not injector.reload()
    assert injector.current.error_rate == 0.5


def test_a_same_size_write_within_one_clock_tick_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"error_rate": 0.5}))
    injector = FaultInjector(Faults(), instance="i-1", path=path)
    assert injector.reload()
    before = path.stat()
    path.write_text(json.dumps({"error_rate": 0.7}))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same mtime, as within one tick
    assert injector.reload()
    assert injector.current.error_rate == 0.7
