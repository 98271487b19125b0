"""Stage: ``inbound.jwt`` (Istio's RequestAuthentication with its AuthorizationPolicy's scopes): a call to a method
the first matching rule names must carry ``authorization: Bearer <JWT>`` of a trusted issuer, holding the rule's
scopes and claims, whether it came through the edge or not. Refused TokenInvalid (UNAUTHENTICATED) or
TokenInsufficient (PERMISSION_DENIED) with meshlet's ErrorInfo. The verification is meshlet.auth.jwt's, the one
the edge uses. After identify and authorize (a service refused by intentions costs no signature check), before
the rate limits and the span.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshlet.auth.jwt import JwtVerifier, TokenRejected, missing_claims, scopes_of
from meshlet.call import InboundCall, method_matches
from meshlet.errors import TokenInsufficient, TokenInvalid

_BEARER = re.compile(r"^Bearer +(\S+) *$", re.IGNORECASE)


@dataclass(frozen=True)
class JwtRule:
    methods: tuple[str, ...]
    scopes: frozenset[str]
    claims: Mapping[str, str]


@dataclass(frozen=True)
class JwtPolicy:
    """What ``inbound.jwt`` holds for one server: the issuers' verifier (their keys, shared by its methods) and the
    rules, first match wins."""

    verifier: JwtVerifier
    rules: Sequence[JwtRule]

    def rule_for(self, method: str) -> JwtRule | None:
        return next((r for r in self.rules if any(method_matches(method, p) for p in r.methods)), None)

    async def close(self) -> None:
        await self.verifier.close()


class RequireJwt:
    __slots__ = ("_policy",)

    def __init__(self, policy: JwtPolicy) -> None:
        self._policy = policy

    async def __call__(self, call: InboundCall, next: Callable[[InboundCall], Awaitable[Any]]) -> Any:
        rule = self._policy.rule_for(call.method)
        if rule is None:
            return await next(call)
        info = {"method": call.method}
        header = next_value(call.metadata, "authorization")
        matched = _BEARER.match(header) if header is not None else None
        if matched is None:
            raise TokenInvalid(f"{call.method} needs authorization: Bearer <JWT>", metadata=info)
        try:
            claims = await self._policy.verifier.verify(matched.group(1))
        except TokenRejected as rejected:
            raise TokenInvalid(rejected.description, metadata=info) from None
        lacking = sorted(rule.scopes - scopes_of(claims))
        if lacking:
            message = f"the token lacks the scope {', '.join(lacking)} that {call.method} requires"
            raise TokenInsufficient(message, metadata={**info, "scopes": " ".join(lacking)})
        claim_names = missing_claims(claims, rule.claims)
        if claim_names:
            message = f"the token lacks the claim {', '.join(claim_names)} that {call.method} requires"
            raise TokenInsufficient(message, metadata={**info, "claims": " ".join(claim_names)})
        return await next(call)


def next_value(metadata: Any, key: str) -> str | None:
    """The first value of `key` in the call's metadata (gRPC lowercases keys)."""
    for name, value in metadata or ():
        if name == key and isinstance(value, str):
            return value
    return None
