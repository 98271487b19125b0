"""What the pipelines and policies report as they decide: frozen, past-tense facts that telemetry turns into
span events, metrics and log lines. Emitted only on the paths where something happened (a retry, a refusal, a
transition), never for a plain successful call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshlet.endpoints import Endpoint


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    upstream: str
    method: str
    attempt: int  # the attempt that failed (1-based)
    delay_s: float
    code: str


@dataclass(frozen=True, slots=True)
class RetryNotAttempted:
    """A failed attempt that was not retried, and why (not_idempotent, budget, deadline, max_attempts, ...)."""

    upstream: str
    method: str
    attempt: int
    code: str
    why: str


@dataclass(frozen=True, slots=True)
class BudgetRefused:
    upstream: str
    method: str


@dataclass(frozen=True, slots=True)
class BreakerOpened:
    upstream: str
    endpoint: Endpoint
    reopen_after_s: float


@dataclass(frozen=True, slots=True)
class BreakerHalfOpened:
    upstream: str
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class BreakerClosed:
    upstream: str
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class EndpointEjected:
    """The picker stopped choosing an endpoint (its breaker is open and the ejection cap allows leaving it out)."""

    upstream: str
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class EndpointReadmitted:
    """An ejected endpoint is in the picker again: probed, closed, in panic, or over the ejection cap."""

    upstream: str
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class EndpointsChanged:
    upstream: str
    added: tuple[Endpoint, ...]
    removed: tuple[Endpoint, ...]
    total: int


@dataclass(frozen=True, slots=True)
class DiscoveryFailed:
    """Consul did not answer; the last good endpoint set stays in use."""

    upstream: str
    error: str
    retry_in_s: float


Event = (
    RetryScheduled
    | RetryNotAttempted
    | BudgetRefused
    | BreakerOpened
    | BreakerHalfOpened
    | BreakerClosed
    | EndpointEjected
    | EndpointReadmitted
    | EndpointsChanged
    | DiscoveryFailed
)
Listener = Callable[[Event], None]


class EventBus:
    """Fan events out to listeners; with none subscribed, emitting costs one attribute check."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: tuple[Listener, ...] = ()

    def subscribe(self, listener: Listener) -> None:
        self._listeners = (*self._listeners, listener)

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            listener(event)
