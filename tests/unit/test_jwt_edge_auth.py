"""The edge's auth rules, challenges and API key tables (meshlet_edge.auth), pure parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshlet.config.schema import EdgeAuthRoute
from meshlet.errors import ConfigError
from meshlet_edge.auth.api_keys import KeyTable, from_kv, key_hash, read_file
from meshlet_edge.auth.rules import challenge, compile_rules, rule_for, uneven_methods
from meshlet_edge.routes import build_routes, load_pool
from tests.support.edge_echo import ECHO_SERVICE, echo_with_http_rules


def test_the_first_rule_naming_a_request_wins_and_an_unnamed_request_needs_nothing() -> None:
    rules = compile_rules(
        [
            EdgeAuthRoute(match="GET /v1/orders/**", auth="jwt", scopes=("orders.read",)),
            EdgeAuthRoute(match="/shop.orders.v1.Orders/*", auth="api_key"),
        ]
    )
    reading = rule_for(rules, "GET", "/v1/orders/o-1", "/shop.orders.v1.Orders/GetOrder")
    creating = rule_for(rules, "POST", "/v1/orders", "/shop.orders.v1.Orders/CreateOrder")
    assert reading is not None
    assert reading.auth == "jwt"
    assert creating is not None
    assert creating.auth == "api_key"
    assert rule_for(rules, "GET", "/v1/inventory/items/x", "/shop.inventory.v1.Inventory/GetItem") is None


def test_a_bad_match_is_a_config_error_naming_the_rule() -> None:
    with pytest.raises(ConfigError, match=r"edge\.auth\.routes\[0\]\.match"):
        compile_rules([EdgeAuthRoute(match="orders", auth="jwt")])


def test_challenges_follow_rfc_6750_and_never_break_their_quotes() -> None:
    assert challenge("meshlet-edge") == 'Bearer realm="meshlet-edge"'
    said = challenge("r", "invalid_token", 'the issuer "evil\\" is not trusted')
    assert said == 'Bearer realm="r", error="invalid_token", error_description="the issuer \'evil?\' is not trusted"'
    assert challenge("r", "insufficient_scope", "lacks", "a b").endswith('scope="a b"')


def test_a_key_is_found_by_its_hash_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"{key_hash('k-1')}: {{owner: acme, plan: pro, scopes: [orders.read]}}\n")
    table = KeyTable()
    table.replace(read_file(path))
    found = table.lookup("k-1")
    assert found is not None
    assert (found.owner, found.plan, found.scopes) == ("acme", "pro", frozenset({"orders.read"}))
    assert table.lookup("k-2") is None
    assert table.lookup(key_hash("k-1")) is None  # knowing the stored hash is no key


def test_a_keys_file_with_a_key_in_clear_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("my-secret-key: {owner: acme}\n")
    with pytest.raises(ConfigError, match="sha256sum"):
        read_file(path)


def test_malformed_consul_entries_are_left_out() -> None:
    good = {"Key": "meshlet/edge/keys/" + key_hash("k"), "Value": json.dumps({"owner": "o"}).encode()}
    bad_name = {"Key": "meshlet/edge/keys/not-a-hash", "Value": json.dumps({"owner": "o"}).encode()}
    bad_value = {"Key": "meshlet/edge/keys/" + key_hash("j"), "Value": b"{not json"}
    not_utf8 = {"Key": "meshlet/edge/keys/" + key_hash("u"), "Value": b'{"owner": "\xff"}'}
    # an owner x-meshlet-subject could not carry: the call would go upstream without a subject
    forged_owner = json.dumps({"owner": "o\r\nx-role: admin"}).encode()
    forged = {"Key": "meshlet/edge/keys/" + key_hash("f"), "Value": forged_owner}
    keys = from_kv([good, bad_name, bad_value, not_utf8, forged], "meshlet/edge/keys/")
    assert list(keys) == [key_hash("k")]


def test_a_method_whose_paths_need_different_credentials_is_named(tmp_path: Path) -> None:
    """Echo is bound to /v1/echo, /v1/fresh and /v1/private: a rule by one path leaves the others open."""
    descriptors = tmp_path / "echo.pb"
    descriptors.write_bytes(echo_with_http_rules().SerializeToString())
    routes = build_routes({ECHO_SERVICE: "echo"}, load_pool([descriptors])).routes
    by_path = compile_rules([EdgeAuthRoute(match="GET /v1/fresh/*", auth="jwt", scopes=("echo.read",))])
    (sentence,) = uneven_methods(by_path, routes)
    assert sentence.startswith("/meshlet_api.echo.v1.Echo/Echo is reachable as ")
    assert "GET /v1/fresh/{message} (auth jwt with echo.read)" in sentence
    assert "GET /v1/echo/{message} (no credential)" in sentence
    by_method = compile_rules([EdgeAuthRoute(match="/meshlet_api.echo.v1.Echo/Echo", auth="jwt")])
    assert uneven_methods(by_method, routes) == []
    every_path = compile_rules([EdgeAuthRoute(match="GET /v1/**", auth="any")])
    assert uneven_methods(every_path, routes) == []
