"""InFlightLimit: the most calls one upstream may have in flight at once (a bulkhead), so a slow dependency
ties up a bounded share of this process instead of all of it. The bulkhead stage refuses the excess with
RESOURCE_EXHAUSTED at once rather than queueing it: a queue in front of a slow upstream only adds latency.
"""

from __future__ import annotations


class InFlightLimit:
    """A counter with a ceiling. One event loop owns it, so it needs no lock."""

    __slots__ = ("in_flight", "max_in_flight")

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight!r}")
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def try_acquire(self) -> bool:
        """Take a slot; False, and nothing taken, when all are in use."""
        if self.in_flight >= self.max_in_flight:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """Give back a slot taken by `try_acquire()`; exactly once per successful acquire."""
        if self.in_flight <= 0:
            raise RuntimeError("InFlightLimit.release() without a matching try_acquire(): a slot was released twice")
        self.in_flight -= 1

    @property
    def available(self) -> int:
        return self.max_in_flight - self.in_flight

    def __repr__(self) -> str:
        return f"<InFlightLimit {self.in_flight}/{self.max_in_flight} in flight>"
