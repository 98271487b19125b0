"""The sidecar's routing table: local port first, then the gRPC service route map."""

from __future__ import annotations

from meshlet_sidecar.routing import Routes

ROUTES = Routes(by_port={9001: "inventory"}, by_service={"shop.payments.v1.Payments": "payments"})


def test_a_call_on_an_upstreams_local_port_goes_to_that_upstream_whatever_its_service() -> None:
    assert ROUTES.route("/shop.payments.v1.Payments/Charge", local_port=9001) == "inventory"


def test_a_call_on_the_shared_port_is_routed_by_its_grpc_service() -> None:
    assert ROUTES.route("/shop.payments.v1.Payments/Charge", local_port=15001) == "payments"


def test_an_unknown_service_has_no_route_and_the_miss_says_how_to_add_one() -> None:
    assert ROUTES.route("/shop.orders.v1.Orders/Get", local_port=15001) is None
    assert "sidecar.routes: {shop.orders.v1.Orders: <upstream>}" in ROUTES.explain_miss("/shop.orders.v1.Orders/Get")
