"""RetryBudget: how many retries an upstream may receive, so that an outage cannot multiply the load on it.

Finagle's and Linkerd's semantics: every request deposits `ratio` of a retry, every retry withdraws one, and
a floor of `min_per_s` retries per second keeps low-traffic callers able to retry at all. Deposits and
withdrawals both expire after `ttl_s`, so within any window the retries allowed are

    min_per_s * ttl_s + ratio * (requests in the window) - (retries already made in the window)

and a failing upstream sees at most (1 + ratio) times its request rate plus the floor, however many attempts
each call's policy would allow. One budget per upstream, shared by every call to it.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]

SLICES = 10
"""The window is kept as a ring of this many slices (Finagle's WindowedAdder uses 10): 1 s each for 10 s."""


class RetryBudget:
    """A windowed budget of retries. `record_request()` runs once per call: O(1), no allocation."""

    __slots__ = (
        "_clock",
        "_next_at",
        "_per_slice",
        "_requests",
        "_reserve",
        "_retries",
        "_slot",
        "_tick",
        "min_per_s",
        "ratio",
        "ttl_s",
    )

    def __init__(self, ratio: float = 0.2, min_per_s: float = 10.0, ttl_s: float = 10.0, *, clock: Clock) -> None:
        if not 0.0 <= ratio <= 1000.0:
            raise ValueError(f"retry budget ratio must be within 0..1000, got {ratio!r}")
        if min_per_s < 0.0:
            raise ValueError(f"retry budget min_per_s must not be negative, got {min_per_s!r}")
        if ttl_s <= 0.0:
            raise ValueError(f"retry budget ttl_s must be positive, got {ttl_s!r}")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.ttl_s = ttl_s
        self._clock = clock
        self._reserve = min_per_s * ttl_s
        self._per_slice = SLICES / ttl_s
        self._requests = [0] * SLICES
        self._retries = [0] * SLICES
        self._tick = int(clock() * self._per_slice)
        self._slot = self._tick % SLICES
        self._next_at = (self._tick + 1) / self._per_slice  # when the current slice ends

    def record_request(self) -> None:
        """Deposit: one call was made (once per call, not per attempt)."""
        if self._clock() >= self._next_at:
            self._roll()
        self._requests[self._slot] += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False, and nothing taken, when the budget is spent."""
        if self._balance() < 1.0:
            return False
        self._retries[self._slot] += 1
        return True

    @property
    def allowed(self) -> float:
        """Retries this window allows in all: the floor plus `ratio` of its requests."""
        if self._clock() >= self._next_at:
            self._roll()
        return self._reserve + self.ratio * sum(self._requests)

    @property
    def remaining(self) -> float:
        """Retries still available in this window."""
        return max(0.0, self._balance())

    def _balance(self) -> float:
        return self.allowed - sum(self._retries)

    def _roll(self) -> None:
        """Expire the slices that have left the window since the current one began."""
        tick = int(self._clock() * self._per_slice)
        passed = tick - self._tick
        if passed <= 0:
            return  # rounding at a slice's edge: the next call rolls
        requests, retries = self._requests, self._retries
        for step in range(1, min(passed, SLICES) + 1):
            i = (self._tick + step) % SLICES
            requests[i] = 0
            retries[i] = 0
        self._tick = tick
        self._slot = tick % SLICES
        self._next_at = (tick + 1) / self._per_slice

    def __repr__(self) -> str:
        allowed = self.allowed
        left = max(0.0, allowed - sum(self._retries))
        return f"<RetryBudget {left:.1f}/{allowed:.1f} retries left, ratio={self.ratio:g}>"
