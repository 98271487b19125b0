"""Stage: let the call through only if an intention allows its caller to call this method of this service.

Below IdentifyPeer, so the caller's SPIFFE ID is verified; above rate limits, so a denied caller spends no
tokens. The Authorizer (local rules or Consul's intentions) answers from memory on the hot path; a denial is
PERMISSION_DENIED with INTENTION_DENIED naming caller and target, and a warning log line: the first denial of a
caller and method at once, the rest of its window in one line with their ``count`` (a denied caller retrying in
a loop must not flood the log).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from meshlet.call import InboundCall
from meshlet.errors import IntentionDenied
from meshlet.security.intentions import Authorizer, Decision, identity_of, service_of, source_name
from meshlet.telemetry.log_window import WindowedLog

log = logging.getLogger(__name__)
DENIAL_WINDOW_S = 10.0  # one line per caller and method per window, after the first


def denial_log() -> WindowedLog:
    """Where denials are logged: shared by a server's pipelines (one per method), flushed when it stops."""
    return WindowedLog(log, logging.WARNING, window_s=DENIAL_WINDOW_S)


class Authorize:
    __slots__ = ("_authorizer", "_denials", "_service")

    def __init__(self, authorizer: Authorizer, service: str, *, denials: WindowedLog | None = None) -> None:
        self._authorizer = authorizer
        self._service = service  # our own service name: the destination every intention is asked about
        self._denials = denials or denial_log()

    async def __call__(self, call: InboundCall, next: Callable[[InboundCall], Awaitable[Any]]) -> Any:
        decision = self._authorizer.decide_now(call.peer_uri, self._service, call.method)
        if decision is None:  # a caller not seen before, and the authorizer must ask elsewhere first
            decision = await self._authorizer.decide(call.peer_uri, self._service, call.method)
        if not decision.allowed:
            raise self._denied(call, decision)
        return await next(call)

    def _denied(self, call: InboundCall, decision: Decision) -> IntentionDenied:
        source = service_of(call.peer_uri)
        caller = (
            f"{source!r} ({call.peer_uri})"
            if source
            else f"without an identity at {call.peer_address or 'an unknown address'}"
        )
        identity = identity_of(call.peer_uri)
        remedy = self._authorizer.remedy(source_name(identity) if identity else "*", self._service, call.method)
        self._denials.log(
            (call.peer_uri or call.peer_address, call.method),
            "denied %s -> %s %s: %s",
            source or call.peer_address,
            self._service,
            call.method,
            decision.reason,
            extra={
                "event": "authz_denied",
                "caller": call.peer_uri,
                "caller_service": source,
                "peer_address": call.peer_address,
                "target": self._service,
                "method": call.method,
                "reason": decision.reason,
            },
        )
        return IntentionDenied(
            f"caller {caller} may not call {call.method} on {self._service}: {decision.reason}; {remedy}",
            metadata={
                "caller": call.peer_uri or "",
                "target": self._service,
                "method": call.method,
            },
        )
