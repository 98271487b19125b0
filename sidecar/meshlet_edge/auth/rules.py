"""``edge.auth.routes`` compiled once: per request, the first rule whose ``match`` names it (None: auth none), and
the ``WWW-Authenticate`` challenge of a refusal as RFC 6750 words it. Pure.

A method bound to several paths (``additional_bindings``) is one method whichever path reaches it, but a rule by
path names each binding apart: `uneven_methods` finds the methods whose bindings the rules judge differently, so
the edge can say at start that ``GET /v1/orders/*`` guards one door of a method whose other door is open (a rule
by method pattern, ``/pkg.Service/Method``, guards them all)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from meshlet.config.schema import EdgeAuthRoute
from meshlet_edge.request_patterns import RequestPattern, parse_patterns
from meshlet_edge.templates import fill

if TYPE_CHECKING:
    from meshlet_edge.routes import Route

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


def uneven_methods(rules: Sequence[AuthRule], routes: Iterable[Route]) -> list[str]:
    """One sentence per method whose routes need different credentials (each route judged by a path it matches)."""
    needs: dict[str, dict[str, str]] = {}
    for route in routes:
        sample = fill(route.template, dict.fromkeys(route.template.variables, "x"))
        rule = rule_for(rules, route.verb, sample, route.path)
        needs.setdefault(route.path, {})[f"{route.verb} {route.template}"] = _needs(rule)
    return [
        f"{method} is reachable as " + ", ".join(f"{binding} ({need})" for binding, need in found.items())
        for method, found in needs.items()
        if len(set(found.values())) > 1
    ]


def _needs(rule: AuthRule | None) -> str:
    if rule is None or rule.auth == "none":
        return "no credential"
    held = [*sorted(rule.scopes), *(f"{name}={value}" for name, value in sorted(rule.claims.items()))]
    return f"auth {rule.auth}" + (f" with {', '.join(held)}" if held else "")


def challenge(realm: str, error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    """``Bearer realm="...", error="...", error_description="...", scope="..."``; RFC 6750 section 3: no `error`
    when the request carried no credential at all."""
    params = [("realm", realm), ("error", error), ("error_description", description), ("scope", scope)]
    return "Bearer " + ", ".join(f'{name}="{_quoted(value)}"' for name, value in params if value is not None)


def _quoted(value: str) -> str:
    """A quoted-string's content: no quote or backslash (RFC 6750 forbids them in error_description), ASCII only."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" if c == '"' else "?" for c in value)
