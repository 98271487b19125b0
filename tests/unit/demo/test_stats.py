"""Percentiles are nearest-rank over successful calls, and the verdict passes at 99% and says why either way."""

from __future__ import annotations

import pytest

from meshlet.demo.stats import Outcome, Tally, cache_outcome, latency_summary, percentile, verdict


def tally_of(ok: int, failed: int, code: str = "UNAVAILABLE") -> Tally:
    tally = Tally()
    for i in range(ok):
        tally.record(Outcome(i * 0.1, 0.010, "OK"))
    for i in range(failed):
        tally.record(Outcome(i * 0.1, 2.0, code))
    return tally


def test_percentile_is_a_value_that_was_seen() -> None:
    values = [float(v) for v in range(1, 101)]

    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0


def test_percentile_of_nothing_says_so() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_latency_counts_only_successful_calls() -> None:
    summary = latency_summary(tally_of(ok=10, failed=5).outcomes)

    assert summary["p99"] == pytest.approx(0.010)
    assert summary["max"] == pytest.approx(0.010)
    assert latency_summary(tally_of(ok=0, failed=3).outcomes) == {}


def test_the_verdict_passes_at_99_percent() -> None:
    passed = verdict(tally_of(ok=99, failed=1))

    assert passed.passed
    assert passed.exit_code == 0
    assert "99.00%" in passed.reason


def test_the_verdict_fails_below_99_percent_naming_the_failures() -> None:
    failed = verdict(tally_of(ok=98, failed=2, code="DEADLINE_EXCEEDED"))

    assert not failed.passed
    assert failed.exit_code == 1
    assert "DEADLINE_EXCEEDED x2" in failed.reason


def test_the_verdict_fails_when_nothing_completed() -> None:
    assert "no call completed" in verdict(Tally()).reason


@pytest.mark.parametrize(
    ("cache_status", "outcome"),
    [
        ("meshlet-edge; hit; ttl=1", "hit"),
        ("meshlet-edge; fwd=miss; stored", "miss"),
        ("meshlet-edge; fwd=miss; collapsed", "collapsed"),
        ("meshlet-edge; fwd=bypass; detail=store-error", "bypass"),
        (None, "none"),
        ("", "none"),
    ],
)
def test_cache_status_in_a_word(cache_status: str | None, outcome: str) -> None:
    assert cache_outcome(cache_status) == outcome
