"""``edge.auth.routes`` compiled once: per request, the first rule whose ``match`` names it (None: auth none), and
the ``WWW-Authenticate`` challenge of a refusal as RFC 6750 words it. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from meshlet.config.schema import EdgeAuthRoute
from meshlet_edge.request_patterns import RequestPattern, parse_patterns

Proof = Literal["none", "jwt", "api_key", "any"]


@dataclass(frozen=True)
class AuthRule:
    pattern: RequestPattern
    auth: Proof
    scopes: frozenset[str]
    claims: Mapping[str, str]


def compile_rules(routes: Sequence[EdgeAuthRoute]) -> tuple[AuthRule, ...]:
    """The rules in config order; ConfigError naming ``edge.auth.routes[i].match`` for a bad pattern."""
    patterns = parse_patterns([route.match for route in routes], "edge.auth.routes")
    return tuple(
        AuthRule(pattern, route.auth, frozenset(route.scopes), dict(route.claims))
        for pattern, route in zip(patterns, routes, strict=True)
    )


def rule_for(rules: Sequence[AuthRule], verb: str, raw_path: str, method: str) -> AuthRule | None:
    """The first rule naming the request; None when none does (the request needs no credential)."""
    for rule in rules:
        if rule.pattern.matches(verb, raw_path, method):
            return rule
    return None


def challenge(realm: str, error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    """``Bearer realm="...", error="...", error_description="...", scope="..."``; RFC 6750 section 3: no `error`
    when the request carried no credential at all."""
    params = [("realm", realm), ("error", error), ("error_description", description), ("scope", scope)]
    return "Bearer " + ", ".join(f'{name}="{_quoted(value)}"' for name, value in params if value is not None)


def _quoted(value: str) -> str:
    """A quoted-string's content: no quote or backslash (RFC 6750 forbids them in error_description), ASCII only."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" if c == '"' else "?" for c in value)
