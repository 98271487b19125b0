"""The outbound data path: one module per stage, in request order.

The SDK feeds typed calls from generated stubs and the sidecar feeds raw bytes; both run these stages, built
once per upstream by `build_outbound`. Tracing (span, attempt_span) joins the lists with the telemetry issue;
disabled features are absent from the lists rather than checked on every call.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshlet.call import Call
from meshlet.config import UpstreamPolicy
from meshlet.deadline import Clock
from meshlet.events import EventBus
from meshlet.outbound.bulkhead import LimitInFlight
from meshlet.outbound.deadline import ApplyDeadline
from meshlet.outbound.pick import Balancer, PickEndpoint
from meshlet.outbound.report import OutcomeSink, ReportOutcome
from meshlet.outbound.retry import RetryWithinBudget, Sleep
from meshlet.outbound.send import SendOnChannel
from meshlet.pipeline import Handler, compose
from meshlet.resilience.budget import RetryBudget
from meshlet.resilience.bulkhead import InFlightLimit
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


def build_outbound(parts: OutboundParts) -> Callable[[Call], Awaitable[Any]]:
    per_attempt: Handler[Call] = compose(
        [
            PickEndpoint(parts.balancer),  # per attempt, so a retry can avoid the endpoint that just failed
            ReportOutcome(parts.outcomes),  # wraps send: sees the final status and whether the request left
        ],
        terminal=SendOnChannel(parts.channels),
    )
    policy = parts.policy
    return compose(
        [
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
