"""Deadline: a point in time on an injected monotonic clock, never a bare float, and the contextvar that
carries a server handler's deadline into the outbound calls it makes (which open-source grpcio does not do)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar

Clock = Callable[[], float]


class Deadline:
    """When a call must be finished by. Comparable; `remaining()` never goes below zero."""

    __slots__ = ("_clock", "at")

    def __init__(self, at: float, clock: Clock = time.monotonic) -> None:
        self.at = at
        self._clock = clock

    @classmethod
    def after(cls, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        """Seconds left, 0.0 once passed."""
        return max(0.0, self.at - self._clock())

    def has_expired(self) -> bool:
        return self._clock() >= self.at

    def earliest(self, other: Deadline | None) -> Deadline:
        """The tighter of two deadlines (a caller's timeout and an inherited one)."""
        return self if other is None or self.at <= other.at else other

    def __lt__(self, other: Deadline) -> bool:
        return self.at < other.at

    def __repr__(self) -> str:
        return f"<Deadline in {self.at - self._clock():.3f}s>"


HANDLER_DEADLINE: ContextVar[Deadline | None] = ContextVar("meshlet_handler_deadline", default=None)
"""Set by the inbound pipeline for the duration of a handler; read by outbound/deadline.py."""
