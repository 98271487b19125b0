"""Stage: let the call through only if an intention allows its caller to call this method of this service.

Below IdentifyPeer, so the caller's SPIFFE ID is verified; above rate limits, so a denied caller spends no
tokens. The Authorizer (local rules or Consul's intentions) answers from memory on the hot path; a denial is
PERMISSION_DENIED with INTENTION_DENIED naming caller and target, and one warning log line per denied call.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from meshlet.call import InboundCall
from meshlet.errors import IntentionDenied
from meshlet.security.intentions import Authorizer, Decision, identity_of, service_of, source_name

log = logging.getLogger(__name__)


class Authorize:
    __slots__ = ("_authorizer", "_service")

    def __init__(self, authorizer: Authorizer, service: str) -> None:
        self._authorizer = authorizer
        self._service = service  # our own service name: the destination every intention is asked about

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
        log.warning(
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
