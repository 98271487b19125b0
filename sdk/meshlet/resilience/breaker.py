"""EndpointBreaker: one endpoint's circuit breaker, kept per endpoint inside the upstream (not per service), so
one bad instance is ejected while its healthy siblings keep serving.

pybreaker keeps the state machine and the count of consecutive failures; meshlet adds what pybreaker lacks
for a mesh: timing on an injected clock (pybreaker reads the wall clock), one probe at a time in half-open
(pybreaker lets every concurrent caller through), and a reset timeout that backs off while probes keep failing.
A pybreaker listener turns its state changes into meshlet events.

    closed    --`failures` consecutive infrastructure failures-->  open
    open      --reset timeout passed, on the next admits()------->  half_open (admits exactly one probe)
    half_open --probe succeeds------------------------------------>  closed  (reset timeout back to the base)
    half_open --probe fails--------------------------------------->  open    (reset timeout doubles, jittered)

The reset timeout after the n-th consecutive opening is ``reset_timeout_s * 2**(n-1)``, jittered by
+-`jitter` and capped at `reset_timeout_max_s` (Linkerd's failure accrual: 1 s doubling to 60 s, jittered).
Outcomes reported while open are ignored: they belong to attempts admitted before the circuit opened.
pybreaker only ever sees ``call()`` (to count), ``half_open()`` and its listener; its own open-state timing,
which reads the wall clock, is never consulted.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pybreaker

from meshlet.endpoints import Endpoint
from meshlet.events import BreakerClosed, BreakerHalfOpened, BreakerOpened, Event, Listener

Clock = Callable[[], float]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

INFRASTRUCTURE_FAILURES = frozenset({"UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "DATA_LOSS"})

FAIR_SHARE = 0.5
"""The share of the upstream's `timeout` an attempt must have been given for its DEADLINE_EXCEEDED to count."""


def had_fair_share(attempt_timeout_s: float, upstream_timeout_s: float) -> bool:
    """Whether an attempt that ran out of time had long enough for that to say something about its endpoint.

    A caller's own short deadline running out (20 ms to a healthy 50 ms instance) is the caller's business; an
    instance that leaves half the upstream's timeout unanswered is failing. Half, not all: a deadline inherited
    along a chain of calls is always a little shorter than the timeout the next hop is configured with.
    """
    return attempt_timeout_s >= FAIR_SHARE * upstream_timeout_s


def is_infrastructure_failure(code_name: str, reached_server: bool) -> bool:
    """Whether a failed attempt says the endpoint is unwell, and so counts against its breaker.

    UNAVAILABLE, INTERNAL, DATA_LOSS and DEADLINE_EXCEEDED (report it only when the attempt `had_fair_share`
    of time, not when the caller's own deadline ran out first) count; UNKNOWN counts only when the transport
    made it up (`reached_server` False), since a server that answers UNKNOWN is reporting an application's
    unhandled exception. Application codes never count: the endpoint answered correctly that the request was
    wrong, and RESOURCE_EXHAUSTED is a load signal for the balancer, not a fault (Linkerd and Envoy count only
    server faults).
    """
    if code_name in INFRASTRUCTURE_FAILURES:
        return True
    return code_name == "UNKNOWN" and not reached_server


class _InfrastructureFailure(Exception):
    """What pybreaker sees for a failed attempt: raised into CircuitBreaker.call and caught right back."""


def _succeed() -> None:
    return None


def _fail() -> None:
    raise _InfrastructureFailure


def _ignore(event: Event) -> None:
    return None


class _EmitEvents(pybreaker.CircuitBreakerListener):
    """pybreaker's state changes, turned into meshlet events.

    pybreaker calls this before it has finished its own transition, so the event waits in the breaker until
    the pybreaker call returns: a listener of meshlet events may then use the breaker again.
    """

    def __init__(self, owner: EndpointBreaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        owner = self._owner
        event: Event
        if new_state.name == pybreaker.STATE_OPEN:
            event = BreakerOpened(owner.upstream, owner.endpoint, owner._entered_open())
        elif new_state.name == pybreaker.STATE_HALF_OPEN:
            owner._state = HALF_OPEN
            event = BreakerHalfOpened(owner.upstream, owner.endpoint)
        else:
            owner._entered_closed()
            event = BreakerClosed(owner.upstream, owner.endpoint)
        owner._pending = event


class EndpointBreaker:
    """Whether one endpoint may receive attempts, from the outcomes of the attempts it received.

    The pick stage asks `admits(attempt)` (through meshlet.resilience.ejection.Admission) and the report stage
    calls `record_success()`, `record_failure()` (only for `is_infrastructure_failure` codes) or
    `record_cancelled(attempt)` (the attempt ended without a verdict, e.g. the caller cancelled). `attempt` is
    any object that identifies one attempt (the pipeline passes its Call): the breaker remembers which attempt
    is its half-open probe. A probe that reports nothing within one reset timeout is presumed lost, and the
    next caller may probe instead.
    """

    __slots__ = (
        "_cb",
        "_clock",
        "_jitter",
        "_max_s",
        "_on_event",
        "_open_for_s",
        "_opens",
        "_pending",
        "_probe",
        "_probe_since",
        "_rng",
        "_state",
        "endpoint",
        "reopen_at",
        "reset_timeout_s",
        "upstream",
    )

    def __init__(
        self,
        upstream: str,
        endpoint: Endpoint,
        *,
        failures: int = 5,
        reset_timeout_s: float = 10.0,
        reset_timeout_max_s: float = 60.0,
        jitter: float = 0.2,
        clock: Clock,
        rng: random.Random,
        on_event: Listener = _ignore,
    ) -> None:
        if failures < 1:
            raise ValueError(f"breaker failures must be at least 1, got {failures!r}")
        if not 0.0 < reset_timeout_s <= reset_timeout_max_s:
            raise ValueError(
                f"breaker reset timeouts must satisfy 0 < reset_timeout_s <= reset_timeout_max_s, "
                f"got {reset_timeout_s!r} and {reset_timeout_max_s!r}"
            )
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"breaker jitter must be within [0, 1), got {jitter!r}")
        self.upstream = upstream
        self.endpoint = endpoint
        self.reset_timeout_s = reset_timeout_s
        self._max_s = reset_timeout_max_s
        self._jitter = jitter
        self._clock = clock
        self._rng = rng
        self._on_event = on_event
        self._state = CLOSED
        self._opens = 0  # consecutive openings without a close: the backoff exponent
        self._open_for_s = 0.0
        self._probe_since: float | None = None
        self._probe: object = None  # the attempt that holds the half-open probe slot
        self._pending: Event | None = None
        self.reopen_at: float | None = None
        """When an open circuit lets its next probe through, on the injected clock; None unless open."""
        self._cb = pybreaker.CircuitBreaker(
            fail_max=failures,
            reset_timeout=reset_timeout_s,
            listeners=[_EmitEvents(self)],
            name=str(endpoint),
            throw_new_error_on_trip=False,
        )

    @property
    def state(self) -> str:
        """One of "closed", "open" and "half_open"."""
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive infrastructure failures so far (a success resets the count)."""
        return self._cb.fail_counter

    def admits(self, attempt: object = None) -> bool:
        """Whether `attempt` may go to this endpoint now. Half-open, a True makes it the one probe."""
        state = self._state
        if state == CLOSED:
            return True
        now = self._clock()
        if state == OPEN:
            if self.reopen_at is not None and now < self.reopen_at:
                return False
            self._probe_since = now
            self._probe = attempt
            self._cb.half_open()
            self._emit_pending()
            return True
        if self._probe_since is not None and now - self._probe_since < self._open_for_s:
            return False
        self._probe_since = now
        self._probe = attempt
        return True

    def is_refusing(self) -> bool:
        """Open, and its reset timeout has not passed yet: `admits()` would say no."""
        return self._state == OPEN and self.reopen_at is not None and self._clock() < self.reopen_at

    def record_success(self) -> None:
        """The endpoint answered (any status that is not an infrastructure failure counts as an answer)."""
        state = self._state
        if state == OPEN or (state == CLOSED and self._cb.fail_counter == 0):
            return
        self._cb.call(_succeed)
        self._emit_pending()

    def record_failure(self) -> None:
        """An infrastructure failure (see `is_infrastructure_failure`) of an attempt this endpoint received."""
        if self._state == OPEN:
            return
        try:
            self._cb.call(_fail)
        except _InfrastructureFailure:
            pass
        self._emit_pending()

    def record_cancelled(self, attempt: object = None) -> None:
        """`attempt` ended without a verdict on the endpoint (the caller cancelled): if it was the probe, another
        attempt may probe. Attempts sent before the circuit opened free nothing, so one probe is out at a time."""
        if attempt is self._probe:
            self._probe_since = None
            self._probe = None

    def _emit_pending(self) -> None:
        event = self._pending
        if event is not None:
            self._pending = None
            self._on_event(event)

    def _entered_open(self) -> float:
        self._state = OPEN
        self._opens += 1
        self._probe_since = None
        self._probe = None
        doublings = min(self._opens - 1, 32)
        timeout = min(self._max_s, self.reset_timeout_s * (1 << doublings))
        timeout = min(self._max_s, timeout * (1.0 + self._jitter * (2.0 * self._rng.random() - 1.0)))
        self._open_for_s = timeout
        self.reopen_at = self._clock() + timeout
        return timeout

    def _entered_closed(self) -> None:
        self._state = CLOSED
        self._opens = 0
        self._probe_since = None
        self._probe = None
        self.reopen_at = None

    def __repr__(self) -> str:
        head = f"<EndpointBreaker {self.endpoint} {self._state}, {self.failures} failures"
        if self._state == OPEN and self.reopen_at is not None:
            return f"{head}, reopens in {max(0.0, self.reopen_at - self._clock()):.1f}s>"
        if self._state == HALF_OPEN:
            return f"{head}, probe {'in flight' if self._probe_since is not None else 'allowed'}>"
        return f"{head}>"
