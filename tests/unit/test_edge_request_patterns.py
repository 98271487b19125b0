"""The patterns edge policies name requests by: an HTTP verb and path pattern, matched as the routes' own templates
match (so routing and policy cannot disagree about a path), or a gRPC method pattern."""

from __future__ import annotations

import pytest

from meshlet.errors import ConfigError
from meshlet_edge.request_patterns import parse_pattern, parse_patterns

ORDERS = "/shop.orders.v1.Orders/GetOrder"


@pytest.mark.parametrize(
    ("pattern", "verb", "path", "named"),
    [
        ("GET /v1/orders/**", "GET", "/v1/orders/ord-1", True),
        ("GET /v1/orders/**", "GET", "/v1/orders", True),
        ("GET /v1/orders/**", "GET", "/v1/orders/ord-1:watch", True),
        ("GET /v1/orders/**", "POST", "/v1/orders/ord-1", False),
        # HEAD is a GET without the body, routed to the GET's method: the GET's rules judge it
        ("GET /v1/orders/**", "HEAD", "/v1/orders/ord-1", True),
        ("HEAD /v1/orders/**", "HEAD", "/v1/orders/ord-1", True),
        ("HEAD /v1/orders/**", "GET", "/v1/orders/ord-1", False),
        ("POST /v1/orders/**", "HEAD", "/v1/orders/ord-1", False),
        ("GET /v1/orders/*", "GET", "/v1/orders/ord-1", True),
        ("GET /v1/orders/*", "GET", "/v1/orders/a/b", False),
        ("GET /v1/orders/*", "GET", "/v1/orders/", False),
        ("* /v1/orders/*", "DELETE", "/v1/orders/ord-1", True),
        # escaped literals are compared decoded, as the route table compares them: no way round a rule by escaping
        ("GET /v1/orders/*", "GET", "/v1/%6Frders/ord-1", True),
        ("GET /v1/orders/*", "GET", "/V1/orders/ord-1", False),
        ("POST /v1/inventory/items/*:reserve", "POST", "/v1/inventory/items/sku-tea:reserve", True),
        ("POST /v1/inventory/items/*:reserve", "POST", "/v1/inventory/items/sku-tea", False),
    ],
)
def test_a_path_pattern_names_what_the_route_table_would_route_there(
    pattern: str, verb: str, path: str, named: bool
) -> None:
    assert parse_pattern(pattern).matches(verb, path, ORDERS) is named


@pytest.mark.parametrize(
    ("pattern", "method", "named"),
    [
        ("/shop.orders.v1.Orders/*", ORDERS, True),
        ("/shop.orders.v1.Orders/*", "/shop.orders.v1.OrdersAdmin/GetOrder", False),
        ("/shop.orders.v1.Orders/GetOrder", ORDERS, True),
        ("/shop.orders.v1.Orders/GetOrder", "/shop.orders.v1.Orders/GetOrders", False),
    ],
)
def test_a_method_pattern_names_the_grpc_method_whatever_the_http_path(pattern: str, method: str, named: bool) -> None:
    assert parse_pattern(pattern).matches("GET", "/anything", method) is named


@pytest.mark.parametrize(
    "pattern", ["/v1/orders", "get /v1/orders", "GET v1/orders", "GET /v1/{order_id}", "GET /v1/**/x", "GET", ""]
)
def test_a_bad_pattern_is_refused_with_the_shapes_it_may_take(pattern: str) -> None:
    with pytest.raises(ValueError, match="GET /v1/orders"):
        parse_pattern(pattern)


def test_a_bad_pattern_in_config_names_its_field_and_index() -> None:
    with pytest.raises(ConfigError, match=r"edge\.cache\.routes\[1\]\.match"):
        parse_patterns(["GET /v1/orders/*", "/v1/orders"], "edge.cache.routes")
