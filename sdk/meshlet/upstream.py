"""Upstream: everything kept per destination service, built once and shared by every call to it.

Discovery feeds it endpoint sets; attempts report their outcomes to it; from both it keeps one breaker per
endpoint and rebuilds the immutable Picker snapshot that the pick stage reads, so the hot path never waits on
a lock or a decision. Its `repr` is the service's line on the sidecar's /clusters page.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from opentelemetry.trace import Tracer

from meshlet.balance.picker import LoadTracker, Picker
from meshlet.call import Call
from meshlet.config import UpstreamPolicy
from meshlet.deadline import Clock
from meshlet.discovery.instances import InstanceReport
from meshlet.endpoints import Endpoint, EndpointSet
from meshlet.errors import BreakerOpen, MeshError, NoHealthyEndpoint
from meshlet.events import EndpointEjected, EndpointReadmitted, EndpointsChanged, Event, EventBus
from meshlet.outbound import OutboundParts, build_outbound
from meshlet.outbound.report import NO_VERDICT
from meshlet.outbound.retry import Sleep
from meshlet.outbound.send import ExplainFailure
from meshlet.resilience.breaker import EndpointBreaker, is_infrastructure_failure
from meshlet.resilience.budget import RetryBudget
from meshlet.resilience.bulkhead import InFlightLimit
from meshlet.resilience.ejection import Admission, OutlierEjection
from meshlet.telemetry.access_log import AccessLog
from meshlet.telemetry.method_names import MethodNames
from meshlet.telemetry.metrics import Metrics
from meshlet.transport.channels import EndpointChannels


class Upstream:
    """One destination service: its endpoints, their breakers, the picker over them, and the outbound pipeline."""

    def __init__(
        self,
        name: str,
        policy: UpstreamPolicy,
        *,
        channels: EndpointChannels,
        events: EventBus,
        clock: Clock,
        rng: random.Random,
        sleep: Sleep = asyncio.sleep,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
        explain_failure: ExplainFailure | None = None,
        instances: InstanceReport | None = None,
        names: MethodNames | None = None,
    ) -> None:
        self.name = name
        self.instances = instances  # what Consul knows of the instances, for the message when none passes
        self.policy = policy
        self.events = events
        self.channels = channels
        self.load = LoadTracker()
        self.budget = RetryBudget(
            ratio=policy.retry.budget_ratio,
            min_per_s=policy.retry.budget_min_per_s,
            ttl_s=policy.retry.budget_ttl,
            clock=clock,
        )
        self.bulkhead = InFlightLimit(policy.max_in_flight)
        self.ejection = OutlierEjection(
            max_ejection_ratio=policy.breaker.max_ejection_ratio, panic_threshold=policy.breaker.panic_threshold
        )
        self._clock = clock
        self._rng = rng
        self._tags = frozenset(policy.tags)
        self._endpoints: EndpointSet | None = None  # None until discovery answers
        self._breakers: dict[Endpoint, EndpointBreaker] = {}
        self._departed: dict[Endpoint, tuple[EndpointBreaker, float]] = {}  # breakers of endpoints gone, and when
        self._picker: Picker | None = None
        self._admission: Admission | None = None
        self._answered = asyncio.Event()
        # Endpoints discovery listed that were left out because they did not prove to be this service (mTLS), and why.
        self.refused_endpoints: Callable[[], Mapping[Endpoint, str]] = dict
        self._readmit_timer: asyncio.TimerHandle | None = None
        self._parts = OutboundParts(
            policy=policy,
            balancer=self,
            outcomes=self,
            channels=channels,
            budget=self.budget,
            bulkhead=self.bulkhead,
            events=events,
            clock=clock,
            rng=rng,
            sleep=sleep,
            tracer=tracer,
            service=name,
            metrics=metrics,
            access_log=access_log,
            explain_failure=explain_failure,
            names=names if names is not None else MethodNames(),
        )
        self.handler = build_outbound(self._parts)
        self._own_handler: Callable[[Call], Awaitable[Any]] | None = None

    @property
    def own_handler(self) -> Callable[[Call], Awaitable[Any]]:
        """The pipeline of the mesh's own calls to this upstream (asking its reflection service): balanced, retried
        and guarded by the same breakers as the users' calls, but without spans, metrics or access log lines;
        built on first use."""
        if self._own_handler is None:
            self._own_handler = build_outbound(replace(self._parts, tracer=None, metrics=None, access_log=None))
        return self._own_handler

    # ------------------------------------------------------------------ discovery feeds endpoint sets

    def update_endpoints(self, endpoints: EndpointSet) -> None:
        """A new passing set from discovery: keep breakers of endpoints that stay, retire channels of those gone.

        An endpoint that comes back within the channels' grace (a Consul flap) gets its breaker back: a flap
        neither re-admits a failing instance nor forgets what its breaker knew.
        """
        endpoints = endpoints.with_tags(self._tags)
        old = self._endpoints or EndpointSet()
        diff = old.diff(endpoints)
        now = self._clock()
        for endpoint in diff.removed:
            breaker = self._breakers.pop(endpoint, None)
            if breaker is not None:
                self._departed[endpoint] = (breaker, now)
            self.channels.retire(endpoint)
        for endpoint in endpoints:
            if endpoint not in self._breakers:
                self._breakers[endpoint] = self._returned_breaker(endpoint, now) or self._new_breaker(endpoint)
        if self._departed:
            self._forget_departed(now)
        self.load.retain(endpoints)
        self._endpoints = endpoints
        self._rebuild()
        self._answered.set()
        if diff.added or diff.removed:
            self.events.emit(EndpointsChanged(self.name, tuple(diff.added), tuple(diff.removed), total=len(endpoints)))

    def _returned_breaker(self, endpoint: Endpoint, now: float) -> EndpointBreaker | None:
        departed = self._departed.pop(endpoint, None)
        if departed is None or now - departed[1] > self.channels.close_grace_s:
            return None
        return departed[0]

    def _forget_departed(self, now: float) -> None:
        grace = self.channels.close_grace_s
        for endpoint in [e for e, (_, left_at) in self._departed.items() if now - left_at > grace]:
            del self._departed[endpoint]

    def _new_breaker(self, endpoint: Endpoint) -> EndpointBreaker:
        policy = self.policy.breaker
        return EndpointBreaker(
            upstream=self.name,
            endpoint=endpoint,
            failures=policy.failures,
            reset_timeout_s=policy.reset_timeout,
            reset_timeout_max_s=policy.reset_timeout_max,
            clock=self._clock,
            rng=self._rng,
            on_event=self._breaker_event,
        )

    def _breaker_event(self, event: Event) -> None:
        self.events.emit(event)
        self._rebuild()

    def _rebuild(self) -> None:
        """A new picker snapshot over what the ejection policy admits; re-run when an ejected endpoint is due."""
        endpoints = self._endpoints
        if endpoints is None:
            return
        before = self._admission.ejected if self._admission is not None else ()
        admission = self._admission = self.ejection.admitted(endpoints.endpoints, self._breakers)
        if admission.ejected != before:
            self._ejections_changed(before, admission.ejected, endpoints)
        self._picker = Picker(admission.endpoints, load=self.load, rng=self._rng, strategy=self.policy.balancer)
        if self._readmit_timer is not None:
            self._readmit_timer.cancel()
            self._readmit_timer = None
        if admission.review_at is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # discovery and breakers only change state on the loop
                return
            delay = max(0.0, admission.review_at - self._clock()) + 0.001
            self._readmit_timer = loop.call_later(delay, self._rebuild)

    def _ejections_changed(
        self, before: tuple[Endpoint, ...], now: tuple[Endpoint, ...], endpoints: EndpointSet
    ) -> None:
        for endpoint in now:
            if endpoint not in before:
                self.events.emit(EndpointEjected(self.name, endpoint))
        for endpoint in before:
            if endpoint not in now and endpoint in endpoints:  # one that left Consul is gone, not readmitted
                self.events.emit(EndpointReadmitted(self.name, endpoint))

    # ------------------------------------------------------------------ the pick stage reads these

    @property
    def picker(self) -> Picker | None:
        return self._picker

    async def wait_first_answer(self, timeout_s: float) -> None:
        if not self._answered.is_set():
            try:
                await asyncio.wait_for(self._answered.wait(), timeout_s)
            except TimeoutError:
                pass

    def admits(self, endpoint: Endpoint, attempt: Call) -> bool:
        admission = self._admission
        return admission is None or admission.admits(endpoint, attempt)

    async def no_endpoint_error(self, call: Call) -> MeshError:
        info = {"upstream": self.name, "attempts": str(call.attempt)}
        if call.tried:
            info["endpoints"] = ",".join(map(str, call.tried))
        if self._endpoints is None:
            return NoHealthyEndpoint(
                f"discovery has not answered for {self.name} yet: check that Consul is reachable "
                f"and that the service is registered",
                metadata=info,
            )
        refused = self.refused_endpoints()
        if not self._endpoints and refused:
            reasons = "; ".join(f"{endpoint}: {why}" for endpoint, why in sorted(refused.items(), key=str))
            return NoHealthyEndpoint(
                f"no instance of {self.name} that Consul lists proved to be {self.name} ({reasons}): check that "
                f"the instances registered as {self.name} present its certificate",
                metadata={**info, "refused": ",".join(map(str, refused))},
            )
        if not self._endpoints:
            return NoHealthyEndpoint(
                f"no healthy instance of {self.name}: Consul lists no passing instance"
                + (f" with tags {sorted(self._tags)}" if self._tags else "")
                + f"; {await self._where_to_look(call)}",
                metadata=info,
            )
        return BreakerOpen(
            f"circuit open for {self.name}: all {len(self._endpoints)} endpoints are failing and ejected; "
            f"calls resume when a probe succeeds",
            metadata=info,
        )

    async def _where_to_look(self, call: Call) -> str:
        """The instances Consul knows and their checks' output (asked at most every few seconds), or where to read
        them; a sidecar's /ready says why it holds its instance out."""
        sidecar = "a sidecar's admin /ready says why it is not ready"
        found = None
        if self.instances is not None:
            found = await self.instances.summary(call.deadline.remaining() if call.deadline is not None else 1.0)
        if found is None:
            return (
                f"look at the instances Consul knows and their checks' output (/v1/health/service/{self.name}); "
                f"{sidecar}"
            )
        return f"{found} ({sidecar})"

    # ------------------------------------------------------------------ the report stage calls these

    def attempt_started(self, endpoint: Endpoint) -> None:
        self.load.started(endpoint)

    def attempt_finished(
        self, endpoint: Endpoint, code: str | None, may_have_reached_server: bool, attempt: Call
    ) -> None:
        self.load.finished(endpoint)
        breaker = self._breakers.get(endpoint)
        if breaker is None:
            return
        if code is None:
            breaker.record_success()
        elif code == NO_VERDICT:
            breaker.record_cancelled(attempt)
        elif is_infrastructure_failure(code, may_have_reached_server):
            breaker.record_failure()
        else:
            breaker.record_success()  # an application status: the endpoint is up and answering

    # ------------------------------------------------------------------ lifecycle and introspection

    async def close(self) -> None:
        if self._readmit_timer is not None:
            self._readmit_timer.cancel()
        if self.instances is not None:
            await self.instances.close()
        await self.channels.close()

    def describe(self) -> dict[str, Any]:
        """What /clusters shows: endpoints, breaker states, load, budget."""
        ejected = self._admission.ejected if self._admission is not None else ()
        return {
            "name": self.name,
            "endpoints": [
                {
                    "address": str(e),
                    "weight": e.weight,
                    "in_flight": self.load.in_flight(e),
                    "breaker": self._breakers[e].state if e in self._breakers else "closed",
                    "ejected": e in ejected,
                }
                for e in (self._endpoints or ())
            ],
            "panic": self._admission is not None and self._admission.panic,
            "in_flight": self.bulkhead.in_flight,
            "max_in_flight": self.bulkhead.max_in_flight,
            "budget": repr(self.budget),
            "budget_remaining": self.budget.remaining,
        }

    def __repr__(self) -> str:
        if self._endpoints is None:
            return f"<Upstream {self.name}: waiting for discovery>"
        states: dict[str, int] = {}
        for breaker in self._breakers.values():
            states[breaker.state] = states.get(breaker.state, 0) + 1
        breakers = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
        picker = len(self._picker) if self._picker is not None else 0
        panic = " (panic)" if self._admission is not None and self._admission.panic else ""
        return (
            f"<Upstream {self.name}: {len(self._endpoints)} endpoints, {picker} admitted{panic}"
            f" | breakers: {breakers} | in flight: {self.bulkhead.in_flight}>"
        )
