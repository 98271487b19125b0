"""OutlierEjection: from the endpoints' breaker states, the set the picker balances over (an Admission).

Computed when discovery or a breaker changes, never per call; the picker only reads the snapshot. Envoy's two
guards against a detector that is wrong about many endpoints at once apply:

- at most `max_ejection_ratio` of the endpoints are ejected, and at least one may always be (Envoy's
  max_ejection_percent "will eject at least one host regardless of the value"); endpoints over the cap stay
  in the set although their breaker is open, and receive attempts (their outcomes are not recorded while
  open; at their reset timeout they are probed like any other);
- when fewer than `panic_threshold` of the endpoints have a closed breaker, the picker balances over all of
  them, breakers and probes notwithstanding (Envoy's panic mode). Trap: with three endpoints and the default
  0.5, two open breakers already mean panic.

Both give way when no breaker is closed at all: then only probes go out, to the endpoints whose reset timeout
has passed, and when none has, the Admission is empty with `all_open` set, and the pick stage fails fast with
BreakerOpen "circuit open for <service>" (Linkerd: with every endpoint failing, fail fast until a probe
succeeds). A single endpoint whose breaker is open is the common case of this.

How the Admission and the breakers' `admits()` work together: the picker chooses among `endpoints`, then
asks ``admission.admits(endpoint, attempt)``. That is True at once for an endpoint with a closed breaker (or one kept
by the cap, or any endpoint in panic), and for an endpoint in `probing` (half-open, or open with its reset
timeout passed) it is that breaker's `admits()`, which lets exactly one probe through and turns an open
breaker half-open. A False means "pick another". Recompute the Admission on every breaker event, on a
discovery change, and once the clock reaches `review_at` (when an ejected endpoint becomes due for a probe).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshlet.endpoints import Endpoint
from meshlet.resilience.breaker import CLOSED, EndpointBreaker


@dataclass(frozen=True, slots=True)
class Admission:
    """The endpoints an upstream's picker may choose from right now, and why the others are missing."""

    endpoints: tuple[Endpoint, ...]
    panic: bool = False
    ejected: tuple[Endpoint, ...] = ()
    probing: Mapping[Endpoint, EndpointBreaker] = field(default_factory=dict)
    all_open: bool = False
    review_at: float | None = None

    def admits(self, endpoint: Endpoint, attempt: object = None) -> bool:
        """Whether `attempt` may go to `endpoint`, chosen from `endpoints`. O(1); may make it a breaker's probe."""
        breaker = self.probing.get(endpoint)
        return breaker is None or breaker.admits(attempt)

    def __repr__(self) -> str:
        if self.all_open:
            return f"<Admission none: all {len(self.ejected)} circuits open>"
        text = f"<Admission {len(self.endpoints)} endpoints"
        if self.panic:
            text += " (panic: balancing over all)"
        if self.ejected:
            text += f", ejected {', '.join(map(str, self.ejected))}"
        if self.probing:
            text += f", probing {', '.join(map(str, self.probing))}"
        return text + ">"


class OutlierEjection:
    """The ejection policy of one upstream: `admitted()` turns breaker states into an Admission."""

    __slots__ = ("max_ejection_ratio", "panic_threshold")

    def __init__(self, max_ejection_ratio: float = 0.5, panic_threshold: float = 0.5) -> None:
        if not 0.0 <= max_ejection_ratio <= 1.0:
            raise ValueError(f"max_ejection_ratio must be within 0..1, got {max_ejection_ratio!r}")
        if not 0.0 <= panic_threshold <= 1.0:
            raise ValueError(f"panic_threshold must be within 0..1, got {panic_threshold!r}")
        self.max_ejection_ratio = max_ejection_ratio
        self.panic_threshold = panic_threshold

    def admitted(self, endpoints: Sequence[Endpoint], breakers: Mapping[Endpoint, EndpointBreaker]) -> Admission:
        """The Admission for `endpoints` (in their order); an endpoint without a breaker counts as closed."""
        healthy = 0
        probing: dict[Endpoint, EndpointBreaker] = {}
        refusing: list[tuple[float, int, Endpoint]] = []
        for index, endpoint in enumerate(endpoints):
            breaker = breakers.get(endpoint)
            if breaker is None or breaker.state == CLOSED:
                healthy += 1
            elif breaker.is_refusing():
                refusing.append((breaker.reopen_at or 0.0, index, endpoint))
            else:
                probing[endpoint] = breaker
        if not refusing and not probing:
            return Admission(tuple(endpoints))
        review_at = min(at for at, _, _ in refusing) if refusing else None
        if not healthy:
            ejected = tuple(endpoint for _, _, endpoint in refusing)
            if not probing:
                return Admission((), ejected=ejected, all_open=True, review_at=review_at)
            return Admission(tuple(probing), ejected=ejected, probing=probing, review_at=review_at)
        if healthy < self.panic_threshold * len(endpoints):
            # Still probe the open ones that are due: without a probe an open breaker never closes again.
            return Admission(tuple(endpoints), panic=True, probing=probing, review_at=review_at)
        cap = max(1, math.floor(self.max_ejection_ratio * len(endpoints)))
        # Over the cap, eject the endpoints that stay out longest: the ones whose probes failed most recently.
        refusing.sort(key=lambda item: (-item[0], item[1]))
        out = {endpoint for _, _, endpoint in refusing[:cap]}
        return Admission(
            tuple(endpoint for endpoint in endpoints if endpoint not in out),
            ejected=tuple(endpoint for endpoint in endpoints if endpoint in out),
            probing=probing,
            review_at=review_at,
        )

    def __repr__(self) -> str:
        return (
            f"<OutlierEjection max_ejection_ratio={self.max_ejection_ratio:g} panic_threshold={self.panic_threshold:g}>"
        )
