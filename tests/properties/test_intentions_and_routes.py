"""Who may call what (intentions) and where an outbound call goes (sidecar routes), read from a caller's method
path and SPIFFE ID: both agree with a brute-force reference model of the documented precedence, for any rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshlet.call import method_matches
from meshlet.security.intentions import Intention, Intentions
from meshlet_sidecar.routing import Routes

services = st.sampled_from(["a", "b", "c", "*"])
methods = st.sampled_from(["/pkg.S/M", "/pkg.S/N", "/pkg.T/M", "/pkg.S.x/M"])
patterns = st.sampled_from(["*", "/pkg.S/*", "/pkg.T/*", "/pkg.S/M", "/pkg.S/N", "/pkg.T/M", "/pkg.S.x/*"])
rules = st.builds(
    Intention, services, services, st.lists(patterns, min_size=1, max_size=2, unique=True).map(tuple),
    st.sampled_from(["allow", "deny"]),
)  # fmt: skip


def reference_decision(rules: list[Intention], default: str, source: str | None, destination: str, method: str) -> bool:
    """Consul's pair precedence, then the most specific method pattern, then deny before allow; else default."""

    def reference_matches(pattern: str) -> bool:
        return pattern == "*" or pattern == method or (pattern.endswith("/*") and method.split("/")[1] == pattern[1:-2])

    candidates = [
        (
            (rule.destination == "*", rule.source == "*"),
            2 if pattern == "*" else 1 if pattern.endswith("/*") else 0,
            rule.action != "deny",
            rule.action,
        )
        for rule in rules
        for pattern in rule.methods
        if rule.source in ("*", source) and rule.destination in ("*", destination) and reference_matches(pattern)
    ]
    if not candidates:
        return default == "allow"
    pair_rank = {(False, False): 0, (False, True): 1, (True, False): 2, (True, True): 3}
    best = min(candidates, key=lambda c: (pair_rank[c[0]], c[1], c[2]))
    return best[3] == "allow"


@given(st.lists(rules, max_size=6), st.sampled_from(["allow", "deny"]), st.sampled_from(["a", "b", "c", None]),
       st.sampled_from(["a", "b", "c"]), methods)  # fmt: skip
def test_a_decision_agrees_with_the_reference_precedence(
    rules: list[Intention], default: str, source: str | None, destination: str, method: str
) -> None:
    decided = Intentions(rules, default=default).decide(source, destination, method)  # type: ignore[arg-type]
    assert decided.allowed == reference_decision(rules, default, source, destination, method)


@given(st.lists(rules, max_size=6), st.sampled_from(["a", "b", None]), st.sampled_from(["a", "b"]), methods)
def test_rules_given_in_any_order_decide_alike(
    rules: list[Intention], source: str | None, destination: str, method: str
) -> None:
    forward = Intentions(rules).decide(source, destination, method).allowed
    assert Intentions(reversed(rules)).decide(source, destination, method).allowed == forward


@given(methods, patterns)
def test_a_service_wildcard_matches_its_own_service_and_no_other(method: str, pattern: str) -> None:
    """``/pkg.S/*`` must not match ``/pkg.S.x/M``: a prefix of the service name is another service."""
    service = method.split("/")[1]
    expected = pattern == "*" or pattern == method or pattern == f"/{service}/*"
    assert method_matches(method, pattern) == expected


identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
grpc_services = st.lists(identifiers, min_size=1, max_size=3).map(".".join)


@given(grpc_services, identifiers, st.dictionaries(grpc_services, st.sampled_from(["up1", "up2"]), max_size=4),
       st.dictionaries(st.integers(1, 65535), st.sampled_from(["up3"]), max_size=2),
       st.one_of(st.none(), st.integers(1, 65535)))  # fmt: skip
def test_a_route_is_the_dialled_port_else_the_service_of_the_method(
    service: str, method: str, by_service: dict[str, str], by_port: dict[int, str], port: int | None
) -> None:
    routes = Routes(by_port=by_port, by_service=by_service)
    expected = by_port.get(port) if port is not None and port in by_port else by_service.get(service)
    assert routes.route(f"/{service}/{method}", port) == expected
    if expected is None:
        assert service in routes.explain_miss(f"/{service}/{method}")
