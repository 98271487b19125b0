"""Intentions decide who may call what: Consul's pair precedence, then method specificity, then deny first."""

from __future__ import annotations

import pytest

from meshlet.config import load_config
from meshlet.security.identity import SpiffeId
from meshlet.security.intentions import Decision, Intention, Intentions, IntentionsAuthorizer

CREATE = "/shop.orders.v1.Orders/Create"
LIST = "/shop.orders.v1.Orders/List"
HEALTH = "/grpc.health.v1.Health/Check"
ORDERS = "/shop.orders.v1.Orders/*"
GATEWAY_URI = "spiffe://meshlet.local/ns/default/dc/dc1/svc/gateway"


def rule(source: str, destination: str, action: str, *methods: str) -> Intention:
    return Intention(source, destination, methods or ("*",), action)  # type: ignore[arg-type]


def allowed(intentions: Intentions, source: str | None, method: str = CREATE, destination: str = "orders") -> bool:
    return intentions.decide(source, destination, method).allowed


def test_with_no_rule_the_default_decides_and_says_so() -> None:
    assert Intentions([], default="allow").decide("gateway", "orders", CREATE) == Decision(
        True, "no intention matches and authz.default is allow"
    )
    assert not allowed(Intentions([], default="deny"), "gateway")


def test_an_exact_pair_beats_a_wildcard_source() -> None:
    intentions = Intentions([rule("*", "orders", "deny"), rule("gateway", "orders", "allow")], default="deny")
    assert allowed(intentions, "gateway")
    assert not allowed(intentions, "billing")


def test_pair_precedence_follows_consul() -> None:
    """exact -> exact, then * -> exact, then exact -> *, then * -> *."""
    ladder = [
        rule("*", "*", "allow"),
        rule("gateway", "*", "deny"),
        rule("*", "orders", "allow"),
        rule("gateway", "orders", "deny"),
    ]
    for winner in range(4):
        intentions = Intentions(ladder[: winner + 1], default="deny")
        assert allowed(intentions, "gateway") is (ladder[winner].action == "allow"), ladder[winner]


def test_within_a_pair_a_method_rule_beats_a_service_rule_which_beats_a_catch_all() -> None:
    intentions = Intentions(
        [
            rule("gateway", "orders", "allow", "*"),
            rule("gateway", "orders", "deny", ORDERS),
            rule("gateway", "orders", "allow", CREATE),
        ],
        default="deny",
    )
    assert allowed(intentions, "gateway", CREATE)
    assert not allowed(intentions, "gateway", LIST)
    assert allowed(intentions, "gateway", HEALTH)


def test_conflicting_rules_of_equal_rank_deny() -> None:
    intentions = Intentions([rule("gateway", "orders", "allow", ORDERS), rule("gateway", "orders", "deny", ORDERS)])
    decision = intentions.decide("gateway", "orders", CREATE)
    assert not decision.allowed
    assert "(deny)" in decision.reason


def test_a_method_the_pairs_rules_do_not_name_falls_through_to_wider_rules() -> None:
    intentions = Intentions(
        [rule("gateway", "orders", "allow", CREATE), rule("*", "orders", "deny")],
        default="allow",
    )
    assert allowed(intentions, "gateway", CREATE)
    assert not allowed(intentions, "gateway", LIST)


def test_a_rule_for_another_destination_does_not_apply() -> None:
    intentions = Intentions([rule("gateway", "payments", "allow")], default="deny")
    assert not allowed(intentions, "gateway")
    assert allowed(intentions, "gateway", destination="payments")


def test_a_caller_without_identity_matches_only_wildcard_sources() -> None:
    intentions = Intentions([rule("gateway", "orders", "allow"), rule("*", "orders", "deny", ORDERS)], default="allow")
    decision = intentions.decide(None, "orders", CREATE)
    assert not decision.allowed
    assert allowed(intentions, None, HEALTH)
    assert "no identity" in intentions.decide(None, "orders", HEALTH).reason


def test_the_reason_names_the_rule_that_decided() -> None:
    decision = Intentions([rule("gateway", "orders", "deny", CREATE)]).decide("gateway", "orders", CREATE)
    assert decision == Decision(False, f"matched intention gateway -> orders [{CREATE}] (deny)")


def test_rules_load_from_the_authz_section() -> None:
    config = load_config(
        env={},
        overrides={
            "authz": {
                "default": "deny",
                "rules": [{"from": "gateway", "to": "orders", "methods": [ORDERS], "action": "allow"}],
            }
        },
    )
    intentions = Intentions.from_config(config.authz)
    assert intentions.rules == (Intention("gateway", "orders", (ORDERS,), "allow"),)
    assert allowed(intentions, "gateway")
    assert not allowed(intentions, "gateway", HEALTH)
    assert repr(intentions) == "<Intentions 1 rules, default deny>"


@pytest.mark.parametrize(("methods", "action"), [((), "allow"), (("*",), "maybe")])
def test_an_intention_without_methods_or_with_an_unknown_action_is_refused(
    methods: tuple[str, ...], action: str
) -> None:
    with pytest.raises(ValueError, match="intention"):
        Intention("gateway", "orders", methods, action)  # type: ignore[arg-type]


def test_the_authorizer_reads_the_callers_service_from_its_spiffe_id() -> None:
    authorizer = IntentionsAuthorizer(Intentions([rule("gateway", "orders", "allow")], default="deny"))
    assert authorizer.decide_now(GATEWAY_URI, "orders", CREATE).allowed
    assert not authorizer.decide_now(GATEWAY_URI.replace("gateway", "billing"), "orders", CREATE).allowed
    assert not authorizer.decide_now("spiffe://meshlet.local/agent/client/dc/dc1", "orders", CREATE).allowed
    assert "authz.rules" in authorizer.remedy("billing", "orders", CREATE)


async def test_the_authorizer_answers_the_same_without_waiting() -> None:
    authorizer = IntentionsAuthorizer(Intentions([rule("gateway", "orders", "deny", CREATE)]))
    assert await authorizer.decide(GATEWAY_URI, "orders", CREATE) == authorizer.decide_now(
        GATEWAY_URI, "orders", CREATE
    )


def test_a_source_names_one_namespace_and_partition_and_a_bare_name_the_default_ones() -> None:
    intentions = Intentions([rule("gateway", "orders", "allow"), rule("sandbox/*", "orders", "allow")], default="deny")
    gateway = SpiffeId.parse(GATEWAY_URI)
    assert intentions.decide(gateway, "orders", CREATE).allowed
    assert intentions.decide(
        SpiffeId.parse(GATEWAY_URI.replace("/ns/default", "/ns/sandbox")), "orders", CREATE
    ).allowed
    assert not intentions.decide(
        SpiffeId.parse(GATEWAY_URI.replace("/ns/default", "/ns/other")), "orders", CREATE
    ).allowed
    evil = SpiffeId.parse(GATEWAY_URI.replace("/ns/", "/ap/evil/ns/"))
    assert not intentions.decide(evil, "orders", CREATE).allowed
    assert Intentions([rule("evil/default/gateway", "orders", "allow")], default="deny").decide(evil, "orders", CREATE)


def test_a_wildcard_source_covers_its_own_namespace_only() -> None:
    intentions = Intentions([rule("*", "orders", "allow")], default="deny")
    assert intentions.decide(SpiffeId.parse(GATEWAY_URI), "orders", CREATE).allowed
    assert not intentions.decide(SpiffeId.parse(GATEWAY_URI.replace("/ns/", "/ap/evil/ns/")), "orders", CREATE).allowed
    assert intentions.decide(None, "orders", CREATE).allowed  # a caller without identity matches "*"


@pytest.mark.parametrize("source", ["a/b/c/d", "/gateway", "sandbox/", ""])
def test_a_malformed_source_is_refused(source: str) -> None:
    with pytest.raises(ValueError, match="partition"):
        rule(source, "orders", "allow")
