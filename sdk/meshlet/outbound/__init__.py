"""The outbound data path: one module per stage, in request order.

The SDK feeds typed calls from generated stubs and the sidecar feeds raw bytes; both run these stages, built
once per upstream by `build_outbound`. Disabled features (tracing when no exporter is set) are absent from the
lists rather than checked on every call.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import Tracer

from meshlet.call import Call
from meshlet.config import UpstreamPolicy
from meshlet.deadline import Clock
from meshlet.events import EventBus
from meshlet.outbound.attempt_span import AttemptSpan
from meshlet.outbound.bulkhead import LimitInFlight
from meshlet.outbound.deadline import ApplyDeadline
from meshlet.outbound.observe import CountAttempt, ObserveCall
from meshlet.outbound.pick import Balancer, PickEndpoint
from meshlet.outbound.report import OutcomeSink, ReportOutcome
from meshlet.outbound.retry import RetryWithinBudget, Sleep
from meshlet.outbound.send import ExplainFailure, SendOnChannel
from meshlet.outbound.span import CallSpan
from meshlet.pipeline import Handler, Stage, compose
from meshlet.resilience.budget import RetryBudget
from meshlet.resilience.bulkhead import InFlightLimit
from meshlet.telemetry.access_log import AccessLog
from meshlet.telemetry.method_names import MethodNames
from meshlet.telemetry.metrics import Metrics
from meshlet.transport.channels import EndpointChannels


@dataclass(frozen=True)
class OutboundParts:
    """Everything one upstream's pipeline is built from (owned by meshlet.upstream.Upstream)."""

    policy: UpstreamPolicy
    balancer: Balancer
    outcomes: OutcomeSink
    channels: EndpointChannels
    budget: RetryBudget
    bulkhead: InFlightLimit
    events: EventBus
    clock: Clock
    rng: random.Random
    sleep: Sleep
    tracer: Tracer | None = None  # None: tracing off, and its stages left out
    service: str = ""  # the upstream's name, as metrics and the access log label its calls
    metrics: Metrics | None = None  # None (and no access log): the observe stages left out
    access_log: AccessLog | None = None
    explain_failure: ExplainFailure | None = None  # says why an attempt could not connect (None: NotConnected as is)
    names: MethodNames = field(default_factory=MethodNames)  # which methods metrics and span names call by name


def build_outbound(parts: OutboundParts) -> Callable[[Call], Awaitable[Any]]:
    tracer, names, metrics = parts.tracer, parts.names, parts.metrics
    attempt_stages: list[Stage[Call]] = [AttemptSpan(tracer, names)] if tracer else []  # first: a failed pick shows too
    policy = parts.policy
    per_attempt: Handler[Call] = compose(
        [
            *attempt_stages,
            PickEndpoint(parts.balancer, policy.deadline_floor),  # per attempt: a retry avoids the last one
            *([CountAttempt(parts.service, metrics, names)] if metrics else []),  # attempts that got an endpoint
            ReportOutcome(parts.outcomes, policy.timeout),  # wraps send: sees the final status, whether it left
        ],
        terminal=SendOnChannel(parts.channels, parts.explain_failure),
    )
    call_stages: list[Stage[Call]] = [CallSpan(tracer, names)] if tracer else []  # outermost: sees every refusal below
    observed = metrics is not None or parts.access_log is not None
    observe_stages: list[Stage[Call]] = (
        [ObserveCall(parts.service, metrics, parts.access_log, parts.clock, names)] if observed else []
    )
    return compose(
        [
            *call_stages,
            *observe_stages,  # inside the call span, so the access log line carries its trace id; sees refusals too
            ApplyDeadline(policy.timeout, policy.deadline_floor, parts.clock),  # above retry: one deadline for all
            LimitInFlight(parts.bulkhead),  # above retry: a retried call keeps its one slot
            RetryWithinBudget(  # calls the per-attempt handler once per attempt: the seam between the two lists
                policy.retry,
                parts.budget,
                parts.events,
                floor_s=policy.deadline_floor,
                rng=parts.rng,
                sleep=parts.sleep,
            ),
        ],
        terminal=per_attempt,
    )
