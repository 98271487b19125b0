"""How long a retry waits: full-jitter exponential backoff, the server's pushback, and the rule that no sleep
may run past the call's deadline. The retry stage (meshlet.outbound.retry) sleeps; this module only decides.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MIN_ATTEMPT_S = 0.010
"""The least time worth starting an attempt with: less, and the attempt can only fail with DEADLINE_EXCEEDED."""

_MAX_DOUBLINGS = 64  # 2**64 times any sane base is past any cap; beyond it, stop computing powers


def full_jitter_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """The sleep after failed attempt `attempt` (1-based): uniform in [0, min(max_s, base_s * 2**(attempt-1))].

    AWS's "Full Jitter", the shape gRPC's retry design (A6) and Envoy use too: spreading retries over the whole
    window keeps a fleet of clients that failed together from retrying together.
    """
    doublings = attempt - 1 if attempt > 1 else 0
    ceiling = max_s if doublings >= _MAX_DOUBLINGS else min(max_s, base_s * (1 << doublings))
    return rng.random() * ceiling


@dataclass(frozen=True, slots=True)
class Pushback:
    """What a server said about retrying, in ``grpc-retry-pushback-ms`` (gRPC A6).

    Three cases: nothing said (`retry_after_s` None, `do_not_retry` False), retry after `retry_after_s`
    instead of the client's own backoff, or do not retry at all.
    """

    retry_after_s: float | None = None
    do_not_retry: bool = False

    def __repr__(self) -> str:
        if self.do_not_retry:
            return "<Pushback do not retry>"
        if self.retry_after_s is None:
            return "<Pushback none>"
        return f"<Pushback retry after {self.retry_after_s:g}s>"


NO_PUSHBACK = Pushback()
DO_NOT_RETRY = Pushback(do_not_retry=True)


def parse_pushback(value: str | bytes | None) -> Pushback:
    """Read a ``grpc-retry-pushback-ms`` value: a non-negative integer of milliseconds.

    A6: "If the value for pushback is negative or unparseable, then it will be seen as the server asking the
    client not to retry at all." Absent (None) means the server said nothing.
    """
    if value is None:
        return NO_PUSHBACK
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return DO_NOT_RETRY
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        return DO_NOT_RETRY
    return Pushback(retry_after_s=int(text) / 1000.0)


def delay_within_deadline(delay_s: float, remaining_s: float, min_attempt_s: float = MIN_ATTEMPT_S) -> bool:
    """Whether a retry may sleep `delay_s` and still start an attempt of at least `min_attempt_s` in time.

    A retry that would wake up at (or just before) its deadline only burns budget and returns the same
    DEADLINE_EXCEEDED later: tenacity's ``stop_before_delay`` rule, measured against the call's own deadline.
    """
    return delay_s + min_attempt_s <= remaining_s
