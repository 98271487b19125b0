"""The fault script: what goes wrong, and when, as fractions of the run so that a 10 s test run and a 30 s show
tell the same story. Pure: `Schedule` says which steps are due at an elapsed time; the runner carries them out.

The story: one inventory instance fails half its calls, another dies (its sidecar stays up and reports it
unhealthy, so Consul drops it) and comes back, payments slows down and recovers; the faults are cleared at 70 %
of the run, so the last part shows the mesh healing (breakers probing and closing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["faults", "kill", "restart"]


@dataclass(frozen=True)
class Faults:
    """What a shop service's faults file says (the services re-read it while they run)."""

    error_rate: float = 0.0
    error_code: str = "UNAVAILABLE"
    latency_ms: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"error_rate": self.error_rate, "error_code": self.error_code, "latency_ms": self.latency_ms}


HEALTHY = Faults()


@dataclass(frozen=True)
class FaultStep:
    at: float  # a fraction of the run, 0..1
    action: Action
    target: str  # an instance name
    says: str  # one line for the progress bar and the timeline
    faults: Faults = HEALTHY  # for "faults"

    def at_s(self, duration_s: float) -> float:
        return self.at * duration_s


SCRIPT: tuple[FaultStep, ...] = (
    FaultStep(0.10, "faults", "inventory-1", "inventory-1 fails 50% of calls (UNAVAILABLE)", Faults(error_rate=0.5)),
    FaultStep(0.25, "kill", "inventory-2", "inventory-2 killed (SIGKILL); its sidecar stays up"),
    FaultStep(0.40, "faults", "payments", "payments slows down by 150 ms", Faults(latency_ms=150)),
    FaultStep(0.50, "restart", "inventory-2", "inventory-2 restarted"),
    FaultStep(0.60, "faults", "payments", "payments recovers", HEALTHY),
    FaultStep(0.70, "faults", "inventory-1", "inventory-1 recovers: no faults left", HEALTHY),
)

STEADY = "steady traffic, no faults"


class Schedule:
    """A cursor over the script: `due(elapsed)` returns each step once, when its time has come."""

    def __init__(self, steps: Sequence[FaultStep], duration_s: float) -> None:
        self.steps = tuple(sorted(steps, key=lambda step: step.at))
        self.duration_s = duration_s
        self._next = 0

    def due(self, elapsed_s: float) -> list[FaultStep]:
        start = self._next
        while self._next < len(self.steps) and self.steps[self._next].at_s(self.duration_s) <= elapsed_s:
            self._next += 1
        return list(self.steps[start : self._next])

    def phase(self, elapsed_s: float) -> str:
        """What the last step that has come said, for the progress bar."""
        passed = [step for step in self.steps if step.at_s(self.duration_s) <= elapsed_s]
        return passed[-1].says if passed else STEADY

    def __repr__(self) -> str:
        return f"<Schedule {self._next}/{len(self.steps)} steps done over {self.duration_s:g}s>"
