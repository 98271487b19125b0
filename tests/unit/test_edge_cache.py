"""The edge's cache decisions, ETags and CORS, as pure functions: keys (private per caller, canonical queries),
request directives, Cache-Status, the in-process store's byte budget and generations, If-None-Match's weak
comparison, and the CORS policy's answers."""

from __future__ import annotations

from typing import Any

import pytest

from meshlet.config.fields import parse_byte_size
from meshlet.config.schema import EdgeCacheRoute, EdgeCors
from meshlet.errors import ConfigError
from meshlet_edge.cache.rules import (
    CacheRule,
    bypasses,
    cache_key,
    compile_rules,
    forward_status,
    hit_status,
    invalidated,
    rule_for,
)
from meshlet_edge.cache.stores import Entry, MemoryStore
from meshlet_edge.cors import CorsPolicy, origin_matcher
from meshlet_edge.etags import none_match, strong_etag, weaken

STOCK = "/shop.inventory.v1.Inventory/GetStock"


def rules(*routes: dict[str, Any]) -> tuple[CacheRule, ...]:
    return compile_rules([EdgeCacheRoute(**route) for route in routes])


def test_a_private_key_differs_per_caller_and_a_public_one_does_not() -> None:
    private, public = rules(
        {"match": "GET /v1/items/*", "ttl": 30}, {"match": "GET /v1/items/*", "ttl": 30, "public": True}
    )
    assert cache_key(private, "/v1/items/a", [], [], "alice") != cache_key(private, "/v1/items/a", [], [], "bob")
    assert cache_key(public, "/v1/items/a", [], [], "alice") == cache_key(public, "/v1/items/a", [], [], "bob")


def test_a_key_takes_the_query_in_canonical_order_and_the_vary_values() -> None:
    (rule,) = rules({"match": "GET /v1/items", "ttl": 30, "vary": ["accept-language"], "public": True})
    one = cache_key(rule, "/v1/items", [("b", "2"), ("a", "1")], ["en"], None)
    assert one == cache_key(rule, "/v1/items", [("a", "1"), ("b", "2")], ["en"], None)
    assert one != cache_key(rule, "/v1/items", [("a", "1"), ("b", "2")], ["fr"], None)
    # repeated parameters keep their order: a repeated field's order is part of the message
    assert cache_key(rule, "/v1/items", [("a", "1"), ("a", "2")], [], None) != cache_key(
        rule, "/v1/items", [("a", "2"), ("a", "1")], [], None
    )
    assert cache_key(rule, "/v1/items", [], [], None) != cache_key(rule, "/v1/items/", [], [], None)


def test_rules_cache_gets_only_first_match_wins_and_writes_name_their_invalidations() -> None:
    found = rules(
        {"match": "GET /v1/inventory/items/*", "ttl": 30, "public": True, "invalidate": ["POST /v1/inventory/**"]},
        {"match": "/shop.inventory.v1.Inventory/*", "ttl": 5},
    )
    assert rule_for(found, "GET", "/v1/inventory/items/sku-tea", STOCK) is found[0]
    assert rule_for(found, "GET", "/v1/elsewhere", STOCK) is found[1]
    assert rule_for(found, "POST", "/v1/inventory/items/sku-tea:reserve", STOCK) is None
    assert rule_for(found, "HEAD", "/v1/inventory/items/sku-tea", STOCK) is found[0]  # served from the GET's entry
    assert rule_for(found, "HEAD", "/v1/elsewhere", STOCK) is found[1]
    assert invalidated(found, "POST", "/v1/inventory/items/sku-tea:reserve", "/x.Y/Reserve") == [found[0]]
    assert found[0].cache_control() == "public, max-age=30"
    assert found[1].cache_control() == "private, max-age=5"


def test_a_rule_for_another_verb_or_a_bad_pattern_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"edge.cache.routes\[0\].match.*only GET"):
        rules({"match": "POST /v1/orders", "ttl": 30})
    with pytest.raises(ConfigError, match=r"edge.cache.routes\[0\].invalidate\[0\]"):
        rules({"match": "GET /v1/orders", "ttl": 30, "invalidate": ["orders"]})


@pytest.mark.parametrize(
    ("cache_control", "pragma", "bypass"),
    [
        (None, None, False),
        ("no-cache", None, True),
        ("No-Store", None, True),
        ("max-age=0", None, True),
        ("max-age=60", None, False),
        (None, "no-cache", True),
        ("max-age=60", "no-cache", False),
    ],
)
def test_the_requests_cache_control_decides_a_bypass(cache_control, pragma, bypass) -> None:
    assert bypasses(cache_control, pragma) is bypass


def test_cache_status_speaks_rfc_9211() -> None:
    assert hit_status(12.7) == "meshlet-edge; hit; ttl=12"
    assert forward_status("miss", stored=True) == "meshlet-edge; fwd=miss; stored"
    assert forward_status("miss", collapsed=True) == "meshlet-edge; fwd=miss; collapsed"
    assert forward_status("bypass", detail="no-caller") == "meshlet-edge; fwd=bypass; detail=no-caller"


async def test_the_memory_store_keeps_its_byte_budget_expires_and_invalidates_by_generation() -> None:
    now = [1000.0]
    store = MemoryStore(max_bytes=3000, clock=lambda: now[0])
    entry = Entry(now[0], 10.0, '"t"', "application/json", b"x" * 1000)
    for key in ("a", "b", "c"):
        await store.put("r", 0, key, entry)
    assert store.bytes_used <= 3000
    assert (await store.lookup("r", "a"))[1] is None  # the least recently used went out first
    assert (await store.lookup("r", "c"))[1] == entry
    now[0] += 11
    assert (await store.lookup("r", "c"))[1] is None  # expired
    await store.put("r", 0, "d", Entry(now[0], 10.0, "", "application/json", b"{}"))
    await store.invalidate("r")
    generation, found = await store.lookup("r", "d")
    assert (generation, found) == (1, None)


def test_an_entry_survives_its_encoding() -> None:
    entry = Entry(1700000000.25, 30.0, '"abc"', "application/json; charset=utf-8", b'{"a":\n\n1}')
    assert Entry.decode(entry.encode()) == entry


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", W/"abc"', True),
        ("*", True),
        ('"abcd"', False),
        ("abc", False),
        ("", False),
    ],
)
def test_if_none_match_compares_weakly_lists_and_star(header, matches) -> None:
    assert none_match(header, '"abc"') is matches
    assert none_match(header, 'W/"abc"') is matches  # the compressed answer's weakened tag


def test_a_strong_etag_names_the_bytes_and_weakens_once() -> None:
    assert strong_etag(b"{}") == strong_etag(b"{}") != strong_etag(b"{ }")
    assert weaken(weaken('"a"')) == 'W/"a"'


def test_byte_sizes_read_iec_and_si_units() -> None:
    assert parse_byte_size("64MiB") == 64 * 1024 * 1024
    assert parse_byte_size("1GB") == 10**9
    assert parse_byte_size(2048) == 2048
    with pytest.raises(ValueError, match="size"):
        parse_byte_size("lots")


def test_origin_patterns_take_subdomains_only() -> None:
    matches = origin_matcher(["https://shop.example.com", "https://*.example.org"])
    assert matches("https://shop.example.com")
    assert matches("https://a.b.example.org")
    assert not matches("https://example.org")
    assert not matches("https://evil.com/.example.org")
    assert not matches("http://a.example.org")
    assert not matches("https://a.example.org.evil.com")


def test_a_preflight_is_answered_for_an_allowed_origin_and_refused_otherwise() -> None:
    config = EdgeCors.model_validate(
        {"allow_origins": ["https://shop.example.com"], "allow_credentials": True, "max_age": "10m"}
    )
    policy = CorsPolicy(config, ["GET", "POST"])
    found = policy.preflight("https://shop.example.com", "POST", "Content-Type, X-Api-Key")
    assert found.status == 204
    assert found.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    assert found.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST"  # HEAD is answered wherever GET is
    assert policy.preflight("https://shop.example.com", "HEAD", "X-Api-Key").status == 204
    assert found.headers["Access-Control-Allow-Headers"] == "content-type, x-api-key"
    assert found.headers["Access-Control-Allow-Credentials"] == "true"
    assert found.headers["Access-Control-Max-Age"] == "600"
    assert policy.preflight("https://evil.example", "GET", "").status == 403
    assert policy.preflight("https://shop.example.com", "DELETE", "").status == 403
    assert policy.preflight("https://shop.example.com", "GET", "X-Secret").status == 403
    assert policy.actual("https://evil.example") == {}
    assert "ETag" in policy.actual("https://shop.example.com")["Access-Control-Expose-Headers"]


def test_any_origin_without_credentials_is_a_star_and_with_credentials_a_config_error() -> None:
    policy = CorsPolicy(EdgeCors.model_validate({"allow_origins": ["*"]}), ["GET"])
    assert policy.actual("https://anyone.example")["Access-Control-Allow-Origin"] == "*"
    assert not policy.varies
    with pytest.raises(ValueError, match="allow_credentials"):
        EdgeCors.model_validate({"allow_origins": ["*"], "allow_credentials": True})


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"cache": {"store": "memcached://x"}}, "store"),
        ({"cache": {"max_bytes": "lots"}}, "max_bytes"),
        ({"cache": {"routes": [{"match": "GET /v1/x", "ttl": "30s", "vary": ["bad header"]}]}}, "vary"),
        ({"cors": {"allow_origins": ["*"], "allow_credentials": True}}, "allow_origins"),
    ],
)
def test_bad_cache_and_cors_config_names_the_field(section, field) -> None:
    from pydantic import ValidationError

    from meshlet.config.schema import EdgeConfig

    with pytest.raises(ValidationError) as raised:
        EdgeConfig.model_validate(section)
    assert field in str(raised.value)
