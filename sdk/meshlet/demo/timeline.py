"""What happened to each instance over the run, second by second: in Consul's passing set or not, and its breaker
(as seen by its caller) closed, half-open or open. Pure: the sampler records a `Snapshot` each second; this
module turns consecutive snapshots into events ("inventory-2 left the passing set") and into one row of cells
per instance, the strip the report draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

_ENTERED = {"open": "breaker opened: ejected", "half_open": "breaker half-open: one probe", "closed": "breaker closed"}
_STATE_OF_GAUGE = {2: "open", 1: "half_open", 0: "closed"}
Cell = Literal["serving", "half-open", "ejected", "unhealthy", "unknown"]


@dataclass(frozen=True)
class Snapshot:
    """One sample: the endpoints Consul reports passing, and each endpoint's breaker state at its caller.

    `passing` is None when Consul did not answer; `breakers` is empty while no caller exports breaker metrics.
    `entered` counts the transitions into each state so far, by (endpoint, state): a breaker that opened and
    closed again between two samples still shows.
    """

    t: float  # seconds since the traffic began
    passing: frozenset[str] | None
    breakers: Mapping[str, int] = field(default_factory=dict)
    entered: Mapping[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    t: float
    who: str  # an instance name, or "fault" for the script's own steps
    text: str


def cell(snapshot: Snapshot, endpoint: str, before: Snapshot | None = None) -> Cell:
    """How one endpoint stood in one sample (and since the one `before`); leaving the passing set wins over the
    breaker's view, and a breaker that opened since `before` counts as ejected even if it has closed again."""
    if snapshot.passing is None:
        return "unknown"
    if endpoint not in snapshot.passing:
        return "unhealthy"
    state = snapshot.breakers.get(endpoint, 0)
    if state == 2 or _entered_since(before, snapshot, endpoint, "open") > 0:
        return "ejected"
    return "half-open" if state == 1 else "serving"


def strip(snapshots: Sequence[Snapshot], endpoint: str) -> list[Cell]:
    return [cell(snapshot, endpoint, snapshots[i - 1] if i else None) for i, snapshot in enumerate(snapshots)]


def _entered_since(before: Snapshot | None, after: Snapshot, endpoint: str, state: str) -> float:
    was = before.entered.get((endpoint, state), 0.0) if before is not None else 0.0
    return after.entered.get((endpoint, state), 0.0) - was


def changes(before: Snapshot | None, after: Snapshot, names: Mapping[str, str]) -> list[Event]:
    """The events between two samples, for the endpoints in `names` (endpoint -> instance name)."""
    events: list[Event] = []
    for endpoint, name in names.items():
        if before is not None and before.passing is not None and after.passing is not None:
            was, now = endpoint in before.passing, endpoint in after.passing
            if was and not now:
                events.append(Event(after.t, name, "left Consul's passing set (its health check fails)"))
            elif now and not was:
                events.append(Event(after.t, name, "passing again: back in the balancer"))
        events += _breaker_events(before, after, endpoint, name)
    return events


def _breaker_events(before: Snapshot | None, after: Snapshot, endpoint: str, name: str) -> list[Event]:
    """From the transition counters when the caller exports them, else from the change of the state gauge."""
    if after.entered:
        found = []
        for state, text in _ENTERED.items():
            times = int(_entered_since(before, after, endpoint, state))
            if times > 0:
                found.append(Event(after.t, name, text if times == 1 else f"{text} (x{times})"))
        return found
    old = before.breakers.get(endpoint, 0) if before is not None else 0
    new = after.breakers.get(endpoint, 0)
    if new == old:
        return []
    entered = _STATE_OF_GAUGE.get(new)
    return [Event(after.t, name, _ENTERED[entered] if entered else f"breaker state {new}")]


def events(snapshots: Sequence[Snapshot], names: Mapping[str, str]) -> list[Event]:
    """Every change over the run, in time order."""
    found: list[Event] = []
    previous: Snapshot | None = None
    for snapshot in snapshots:
        found += changes(previous, snapshot, names)
        previous = snapshot
    return found


def resolve(endpoint_label: str, names: Mapping[str, str]) -> str | None:
    """The endpoint as `names` spells it (``127.0.0.1:port``), from a metric label that may be ``host:port``,
    ``ipv4:host:port`` (grpc's peer form) or another host's name for the same port."""
    if endpoint_label in names:
        return endpoint_label
    port = endpoint_label.rsplit(":", 1)[-1]
    matches = [endpoint for endpoint in names if endpoint.rsplit(":", 1)[-1] == port]
    return matches[0] if len(matches) == 1 else None


def normalise_breakers(states: Mapping[str, int], names: Mapping[str, str]) -> dict[str, int]:
    """Breaker states keyed as `names` keys them; labels that match no known endpoint are dropped."""
    resolved: dict[str, int] = {}
    for label, state in states.items():
        endpoint = resolve(label, names)
        if endpoint is not None:
            resolved[endpoint] = max(state, resolved.get(endpoint, 0))
    return resolved


def normalise_transitions(
    counts: Mapping[tuple[str, str], float], names: Mapping[str, str]
) -> dict[tuple[str, str], float]:
    """Transition counts keyed by the endpoint as `names` spells it; unknown endpoints are dropped."""
    resolved: dict[tuple[str, str], float] = {}
    for (label, state), count in counts.items():
        endpoint = resolve(label, names)
        if endpoint is not None:
            resolved[endpoint, state] = resolved.get((endpoint, state), 0.0) + count
    return resolved
