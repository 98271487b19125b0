"""What ``edge.cache.routes`` says, compiled once, and the pure decisions per request: which rule caches it, the
key an answer is stored under, what the request's ``Cache-Control`` allows, and the headers that describe the
outcome (``Cache-Control``, ``Cache-Status`` of RFC 9211).

A key is a hash of everything that may change the answer: the verb, the raw path as routed, the query with its
parameters in a canonical order (``?b=2&a=1`` and ``?a=1&b=2`` are one key; repeated parameters keep their
relative order, which the message's repeated fields keep too), the values of the rule's ``vary`` headers, and,
unless the rule is ``public``, the caller (its name and the claims mapped to headers for the upstream): a private
entry is only ever found by its own caller, holding the same claims."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshlet.config.schema import EdgeCacheRoute
from meshlet.errors import ConfigError
from meshlet_edge.request_patterns import RequestPattern, parse_pattern, parse_patterns

NAME = "meshlet-edge"  # the cache's name in Cache-Status


@dataclass(frozen=True)
class CacheRule:
    index: int
    pattern: RequestPattern
    ttl_s: float
    vary: tuple[str, ...]  # lower-case header names
    public: bool
    invalidated_by: tuple[RequestPattern, ...]
    id: str = ""  # stable across replicas that share a config (and a Redis): the rule's own words, hashed

    def __post_init__(self) -> None:
        words = json.dumps([self.pattern.source, self.vary, self.public])
        object.__setattr__(self, "id", hashlib.sha256(words.encode()).hexdigest()[:16])

    def cache_control(self) -> str:
        return f"{'public' if self.public else 'private'}, max-age={int(self.ttl_s)}"


def compile_rules(routes: Sequence[EdgeCacheRoute], forwarded: Sequence[str] = ()) -> tuple[CacheRule, ...]:
    """The rules of ``edge.cache.routes``; a pattern that cannot name a GET is a ConfigError naming it. Each rule
    varies on the `forwarded` headers (``edge.forward_headers``) too, whatever its ``vary`` says: they reach the
    upstream, so they may change its answer, and an answer keyed without them would be served to a request that
    sent other values (one client's ``Accept-Language`` or token poisoning everyone's entry)."""
    rules = []
    for index, route in enumerate(routes):
        field = f"edge.cache.routes[{index}]"
        try:
            pattern = parse_pattern(route.match)
        except ValueError as error:
            raise ConfigError(f"{field}.match", route.match, str(error)) from None
        if pattern.verb not in (None, "GET"):
            raise ConfigError(f"{field}.match", route.match, "only GET answers are cached: write GET /path/*")
        invalidated_by = parse_patterns(route.invalidate, f"{field}.invalidate")
        vary = tuple(dict.fromkeys((*route.vary, *forwarded)))
        rules.append(CacheRule(index, pattern, route.ttl, vary, route.public, invalidated_by))
    return tuple(rules)


def rule_for(rules: Iterable[CacheRule], verb: str, raw_path: str, method: str) -> CacheRule | None:
    """The first rule that caches this request: a GET, or a HEAD (served from the GET's entry), whatever a gRPC
    method pattern names."""
    if verb != "GET" and verb != "HEAD":
        return None
    return next((rule for rule in rules if rule.pattern.matches(verb, raw_path, method)), None)


def invalidated(rules: Iterable[CacheRule], verb: str, raw_path: str, method: str) -> list[CacheRule]:
    """The rules whose entries a successful request stales (their ``invalidate`` names it)."""
    return [rule for rule in rules if any(p.matches(verb, raw_path, method) for p in rule.invalidated_by)]


def cache_key(
    rule: CacheRule, raw_path: str, query: Iterable[tuple[str, str]], vary: Sequence[str], subject: str | None
) -> str:
    """The key of an answer (see the module's docstring): `vary` holds the values of the rule's vary headers, in
    its order; `subject` is the caller's, ignored by a public rule."""
    ordered = sorted(enumerate(query), key=lambda item: (item[1][0], item[0]))  # by name, stable per name
    pairs = tuple(pair for _, pair in ordered)
    material = ("GET", raw_path, pairs, tuple(vary), None if rule.public else subject)
    return hashlib.sha256(repr(material).encode()).hexdigest()  # repr: quoted and escaped, one text per tuple


def bypasses(cache_control: str | None, pragma: str | None) -> bool:
    """Whether the request asks for a fresh answer (RFC 9111 5.2.1: ``no-cache``, ``no-store``, ``max-age=0``;
    ``Pragma: no-cache`` counts only without ``Cache-Control``, 5.4). Such a request is forwarded, and its answer
    is not stored: the simplest reading that is never wrong."""
    if cache_control is None:
        return pragma is not None and "no-cache" in pragma.lower()
    directives = dict(_directive(part) for part in cache_control.split(","))
    return "no-cache" in directives or "no-store" in directives or directives.get("max-age") == "0"


def _directive(text: str) -> tuple[str, str]:
    name, _, value = text.strip().partition("=")
    return name.strip().lower(), value.strip().strip('"')


def hit_status(ttl_left_s: float) -> str:
    return f"{NAME}; hit; ttl={max(0, int(ttl_left_s))}"


def forward_status(fwd: str, *, stored: bool = False, collapsed: bool = False, detail: str = "") -> str:
    """A Cache-Status for an answer that went upstream: ``fwd=miss`` or ``fwd=bypass``, and what followed."""
    parts = [NAME, f"fwd={fwd}"]
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if detail:
        parts.append(f"detail={detail}")
    return "; ".join(parts)
