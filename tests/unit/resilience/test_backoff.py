from __future__ import annotations

import random

import pytest

from meshlet.resilience.backoff import (
    DO_NOT_RETRY,
    NO_PUSHBACK,
    Pushback,
    delay_within_deadline,
    full_jitter_delay,
    parse_pushback,
)


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (40, 0.25)])
def test_backoff_window_doubles_per_attempt_up_to_the_cap(attempt: int, ceiling: float) -> None:
    rng = random.Random(7)
    delays = [full_jitter_delay(attempt, 0.025, 0.25, rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > 0.9 * ceiling  # full jitter uses the whole window, not just its top


def test_backoff_spreads_clients_that_failed_together() -> None:
    """Full jitter: a fleet retrying after the same failure does not retry in lockstep."""
    delays = [full_jitter_delay(3, 0.025, 1.0, random.Random(seed)) for seed in range(50)]
    assert len(set(delays)) == 50
    assert min(delays) < 0.02 < 0.08 < max(delays)


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = [full_jitter_delay(n, 0.025, 1.0, random.Random(3)) for n in range(1, 6)]
    again = [full_jitter_delay(n, 0.025, 1.0, random.Random(3)) for n in range(1, 6)]
    assert first == again


def test_backoff_survives_absurd_attempt_numbers() -> None:
    assert 0.0 <= full_jitter_delay(10_000, 0.025, 1.0, random.Random(1)) <= 1.0
    assert 0.0 <= full_jitter_delay(0, 0.025, 1.0, random.Random(1)) <= 0.025


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, NO_PUSHBACK),
        ("250", Pushback(retry_after_s=0.25)),
        (b"1500", Pushback(retry_after_s=1.5)),
        (" 0 ", Pushback(retry_after_s=0.0)),
        ("-1", DO_NOT_RETRY),
        ("soon", DO_NOT_RETRY),
        ("", DO_NOT_RETRY),
        ("1.5", DO_NOT_RETRY),
        ("\u0661\u0662", DO_NOT_RETRY),  # Arabic-Indic digits: isdigit() says yes, the wire format says no
        (b"\xff", DO_NOT_RETRY),
    ],
)
def test_server_pushback_is_read_as_grpc_specifies(value: str | bytes | None, expected: Pushback) -> None:
    assert parse_pushback(value) == expected


def test_pushback_says_what_it_means_in_its_repr() -> None:
    assert repr(NO_PUSHBACK) == "<Pushback none>"
    assert repr(DO_NOT_RETRY) == "<Pushback do not retry>"
    assert repr(parse_pushback("200")) == "<Pushback retry after 0.2s>"


def test_retry_may_sleep_only_when_an_attempt_still_fits_before_the_deadline() -> None:
    assert delay_within_deadline(0.1, remaining_s=0.5, min_attempt_s=0.01)
    assert delay_within_deadline(0.49, remaining_s=0.5, min_attempt_s=0.01)
    assert not delay_within_deadline(0.495, remaining_s=0.5, min_attempt_s=0.01)
    assert not delay_within_deadline(0.6, remaining_s=0.5, min_attempt_s=0.01)
    assert not delay_within_deadline(0.0, remaining_s=0.0)
