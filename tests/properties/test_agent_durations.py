"""The dev agent's Go durations (check intervals, TTLs, DeregisterCriticalServiceAfter): any text parses or
raises DurationError, and a duration the agent prints (``format_duration``, as Go's ``Duration.String()``)
reads back to the same number of nanoseconds, as a client that echoes a check definition back needs."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from meshlet.devagent.decode import DurationError, format_duration, parse_duration
from tests.properties.outcome import attempt

NANOS = 1_000_000_000


@given(st.integers(-(10**14), 10**14))  # about a day each way: float seconds hold every nanosecond up to there
@example(2_000_000_001)  # printed "2s": math.isclose() called 2.000000001 s whole and dropped the nanosecond
@example(86_399_999_999_999)  # printed "23h59m60s"
@example(1_500_001)
@example(1)
def test_a_printed_duration_reads_back_to_the_same_nanoseconds(nanos: int) -> None:
    assert round(parse_duration(format_duration(nanos / NANOS)) * NANOS) == nanos


@given(st.one_of(st.text(max_size=12), st.lists(st.sampled_from([*"0123456789.-+", "ns", "ms", "h", "m", "s"]),
                                                max_size=8).map("".join)))  # fmt: skip
def test_any_text_parses_or_raises_duration_error(text: str) -> None:
    outcome = attempt(lambda: parse_duration(text), DurationError)
    if outcome.refused:
        assert str(outcome.error).startswith("time: ")
