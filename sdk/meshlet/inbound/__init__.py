"""The inbound data path: one module per stage, in request order.

(count refusals) -> identify -> authorize -> jwt -> rate_limit -> span -> observe -> validate -> deadline, ending in the
servicer (SDK) or the local app (sidecar). `InboundParts` holds what the stages share (the authorizer, the rate
limiters, the tracer, the metrics, the validator), built once per server; the transport calls `build_inbound` once
per method with that method's terminal. Absent features are absent from the list rather than checked per call. One
module is no stage: abandoned.py, the status of a call whose caller went away, which span, observe and the server
adapters agree on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.trace import Tracer

from meshlet.auth.jwt import verifier
from meshlet.call import InboundCall, ServedInstance, is_mesh_own, may_be_mesh_own
from meshlet.config import Config
from meshlet.deadline import Clock
from meshlet.errors import ConfigError
from meshlet.inbound.authorize import Authorize, denial_log
from meshlet.inbound.deadline import ExposeDeadline
from meshlet.inbound.identify import IdentifyPeer
from meshlet.inbound.jwt import JwtPolicy, JwtRule, RequireJwt
from meshlet.inbound.observe import CountRefusals, ObserveInbound
from meshlet.inbound.rate_limit import RateLimitCaller
from meshlet.inbound.span import ContinueTrace
from meshlet.inbound.validate import ValidateRequest
from meshlet.pipeline import Stage, compose
from meshlet.resilience.rate_limit import MethodRateLimits, RateLimiter, default_burst
from meshlet.security.consul_authz import ConsulAuthorizer, ConsulFactory
from meshlet.security.intentions import Authorizer, Intentions, IntentionsAuthorizer
from meshlet.telemetry.access_log import AccessLog
from meshlet.telemetry.log_window import WindowedLog
from meshlet.telemetry.method_names import MethodNames
from meshlet.telemetry.metrics import Metrics
from meshlet.validation import Decode, RequestValidator, typed

log = logging.getLogger("meshlet.inbound")

InboundHandler = Callable[[InboundCall], Awaitable[Any]]


@dataclass(frozen=True)
class InboundParts:
    """What one server's inbound stages share across its methods. A part left None is a feature turned off,
    and its stage is left out of the list."""

    service: str = ""  # our service name: the destination intentions are asked about
    require_identity: bool = False  # mTLS on: a call without a verified SPIFFE ID is refused
    trusted_domains: tuple[str, ...] = ()  # federated trust domains accepted beside our own (tls.trusted_domains)
    authorizer: Authorizer | None = None
    per_caller: RateLimiter | None = None
    per_method: MethodRateLimits | None = None
    tracer: Tracer | None = None
    metrics: Metrics | None = None
    access_log: AccessLog | None = None
    clock: Clock = time.monotonic  # what call durations are measured with
    names: MethodNames = field(default_factory=MethodNames)  # which methods metrics and span names call by name
    denial_log: WindowedLog = field(default_factory=denial_log)  # one per server, shared by its methods' pipelines
    instance: ServedInstance = field(default_factory=ServedInstance)  # named by the refusals, once registered
    validator: RequestValidator | None = None  # inbound.validate: requests checked against their buf.validate rules
    jwt: JwtPolicy | None = None  # inbound.jwt: end users' bearer tokens required on the methods its rules name

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        consul: ConsulFactory,
        clock: Clock,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
        names: MethodNames | None = None,
        instance: ServedInstance | None = None,
    ) -> InboundParts:
        """The parts `config` asks for. With ``authz.source: consul`` the authorizer talks to the agent that
        `consul` builds a client for: call `close()` when the server stops."""
        authz, limits = config.authz, config.rate_limit
        authorizer: Authorizer | None = None
        if authz.source == "consul":
            authorizer = ConsulAuthorizer(
                consul,
                ttl_s=authz.refresh_interval,
                fail_open=authz.fail_open,
                allow_unidentified=authz.default == "allow",
                clock=clock,
            )
        elif authz.rules or authz.default == "deny":
            authorizer = IntentionsAuthorizer(Intentions.from_config(authz, config.tls.trusted_domains))
        service = config.service.name or ""
        if authorizer is not None and not service:
            raise ConfigError("service.name", None, "is required with authz: intentions name it as their destination")
        log.info(
            "authorization for %s: %s",
            service or "this server",
            describe_authorization(config),
            extra={"event": "authz_effective", "authz_source": authz.source, "authz_default": authz.default},
        )

        def limiter(rate_per_s: float, burst: int | None) -> RateLimiter:
            return RateLimiter(rate_per_s, burst or default_burst(rate_per_s), clock)

        per_caller = limits.per_caller
        per_method = {
            pattern: limiter(limit.rate_per_s, limit.burst) if limit.rate_per_s is not None else None
            for pattern, limit in limits.per_method.items()
        }
        return cls(
            service=service,
            require_identity=config.tls.source != "off",
            trusted_domains=config.tls.trusted_domains,
            authorizer=authorizer,
            per_caller=limiter(per_caller.rate_per_s, per_caller.burst) if per_caller.rate_per_s is not None else None,
            per_method=MethodRateLimits(per_method) if any(v is not None for v in per_method.values()) else None,
            tracer=tracer,
            metrics=metrics,
            access_log=AccessLog() if config.telemetry.access_log else None,
            clock=clock,
            names=names if names is not None else MethodNames(),
            instance=instance or ServedInstance(),
            validator=RequestValidator() if config.inbound.validate_requests else None,
            jwt=require_jwt(config),
        )

    async def close(self) -> None:
        """Stop what runs in the background (the Consul authorizer's refreshes); write the denial lines held."""
        self.denial_log.flush()
        if isinstance(self.authorizer, ConsulAuthorizer):
            await self.authorizer.close()
        if self.jwt is not None:
            await self.jwt.close()


def require_jwt(config: Config) -> JwtPolicy | None:
    """The inbound.jwt stage its config asks for (its keys are fetched when the first token needs them)."""
    jwt = config.inbound.jwt
    if jwt is None:
        return None
    rules = [JwtRule(rule.methods, frozenset(rule.scopes), dict(rule.claims)) for rule in jwt.rules]
    return JwtPolicy(verifier(jwt.issuers), rules)


NO_PARTS = InboundParts()


def describe_authorization(config: Config) -> str:
    """The effective authorization in one sentence, said at the start of every server (SDK and sidecar), so
    that nobody has to work out from defaults whether a deny intention is enforced."""
    authz = config.authz
    if authz.source == "consul":
        chosen = "set" if "source" in authz.model_fields_set else "not set: the default with tls.source consul"
        on_outage = "allowed" if authz.fail_open else "denied"
        return (
            f"source consul ({chosen}): Consul's intentions, asked of the agent at {config.consul.address}; "
            "default: Consul's default intention policy for a caller no intention matches (allow while its ACLs "
            f"are off); changes apply when the intentions' index moves, and every {authz.refresh_interval:g}s at "
            f"the latest; a caller not seen before is {on_outage} while Consul cannot be asked (authz.fail_open)"
        )
    identified = "" if config.tls.source != "off" else "; callers are not identified (tls.source off)"
    if not authz.rules and authz.default == "allow":
        return f"source local, no rules, default allow: every caller is allowed{identified}"
    return f"source local ({len(authz.rules)} rules in authz.rules), default {authz.default}{identified}"


def inbound_stages(parts: InboundParts = NO_PARTS, decode: Decode | None = typed) -> list[Stage[InboundCall]]:
    """The stages in request order, only those whose feature is on. `decode` gives the validate stage the call's
    request as a message (None: the method's message type is unknown, and its requests are not validated)."""
    stages: list[Stage[InboundCall]] = []
    observed = parts.metrics is not None or parts.access_log is not None
    limits = (parts.authorizer, parts.jwt, parts.per_caller, parts.per_method)
    refusing = parts.require_identity or any(part is not None for part in limits)
    if observed and refusing:  # first: it sees every refusal the stages below make
        stages.append(CountRefusals(parts.service, parts.metrics, parts.access_log, parts.clock, parts.names))
    if parts.require_identity:
        stages.append(IdentifyPeer())  # first: nothing below may trust a caller that has not shown a certificate
    if parts.authorizer is not None:
        stages.append(
            Authorize(parts.authorizer, parts.service, denials=parts.denial_log)
        )  # before rate limits: a denied call spends no token
    if parts.jwt is not None:
        stages.append(RequireJwt(parts.jwt))  # after intentions (a denied service costs no signature check)
    if parts.per_caller is not None or parts.per_method is not None:
        # per verified caller, before any work
        stages.append(RateLimitCaller(parts.per_caller, parts.per_method, parts.instance))
    if parts.tracer is not None:
        stages.append(ContinueTrace(parts.tracer, parts.names))  # after the refusals: a refused call costs no span
    if observed:  # inside the span: the access log line carries its trace id
        stages.append(ObserveInbound(parts.service, parts.metrics, parts.access_log, parts.clock, parts.names))
    if parts.validator is not None and decode is not None:  # inside the span: an invalid request is traced
        stages.append(ValidateRequest(parts.validator, decode))
    stages.append(ExposeDeadline())  # last before the handler: its outbound calls inherit what is left of the deadline
    return stages


def build_inbound(
    terminal: InboundHandler, parts: InboundParts = NO_PARTS, method: str = "", decode: Decode | None = typed
) -> InboundHandler:
    """One method's inbound pipeline over its `terminal` (the servicer method, or ForwardToApp). For a `method`
    the mesh itself calls (reflection), a second pipeline without spans, metrics or access log takes the calls
    that carry the mesh's mark: they are checked, authorized and rate limited like any, but are not the app's.
    `decode`: how the validate stage reads a request (typed messages by default; see inbound/validate.py)."""
    users = compose(inbound_stages(parts, decode), terminal=terminal)
    if not may_be_mesh_own(method):
        return users
    quiet = replace(parts, tracer=None, metrics=None, access_log=None)
    own = compose(inbound_stages(quiet, decode), terminal=terminal)

    async def either(call: InboundCall) -> Any:
        return await (own if is_mesh_own(call.metadata) else users)(call)

    return either
