"""`meshlet demo`'s flags: durations with or without a unit, and a clear refusal of values that cannot run."""

from __future__ import annotations

import pytest

from meshlet.cli import build_parser


def test_defaults_are_thirty_seconds_at_forty_per_second_with_faults() -> None:
    args = build_parser().parse_args(["demo"])

    assert (args.duration, args.rate, args.no_faults, args.keep_running) == (30.0, 40.0, False, False)


@pytest.mark.parametrize(("text", "seconds"), [("10", 10.0), ("1.5", 1.5), ("2m", 120.0), ("500ms", 0.5)])
def test_a_duration_is_seconds_or_a_go_duration(text: str, seconds: float) -> None:
    assert build_parser().parse_args(["demo", "--duration", text]).duration == seconds


@pytest.mark.parametrize(("flag", "value"), [("--duration", "0"), ("--duration", "soon"), ("--rate", "-1")])
def test_a_value_that_cannot_run_exits_2_saying_what_to_give(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["demo", flag, value])

    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert flag in error
    assert value in error
