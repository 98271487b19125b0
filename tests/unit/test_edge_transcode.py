"""The edge's route table from the shop's google.api.http annotations, JSON <-> protobuf transcoding, and the
gRPC -> HTTP status mapping with google.rpc.Status as JSON."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2, status_pb2

from meshlet.errors import DETAILS_KEY, ConfigError
from meshlet_edge.routes import RouteTable, build_routes, load_pool
from meshlet_edge.status import HTTP_STATUS, http_status, status_json, status_of
from meshlet_edge.transcode import MAX_TIMEOUT_S, BadRequest, grpc_timeout, request_message, response_json
from meshlet_shop_api.inventory.v1 import inventory_pb2
from meshlet_shop_api.orders.v1 import orders_pb2
from tests.support.descriptor_sets import descriptor_set, write_descriptor_set

SERVICES = {"shop.inventory.v1.Inventory": "inventory", "shop.orders.v1.Orders": "orders"}


@pytest.fixture(scope="module")
def table() -> RouteTable:
    assert inventory_pb2.DESCRIPTOR is not None  # importing the modules puts their services in the default pool
    assert orders_pb2.DESCRIPTOR is not None
    return build_routes(SERVICES, load_pool(()))


def test_the_shop_annotations_become_routes(table: RouteTable) -> None:
    found = table.match("GET", "/v1/inventory/items/sku-tea")
    assert found is not None
    assert (found.route.path, found.route.upstream, found.variables) == (
        "/shop.inventory.v1.Inventory/GetStock",
        "inventory",
        {"sku": "sku-tea"},
    )
    posted = table.match("POST", "/v1/orders")
    assert posted is not None
    assert posted.route.path == "/shop.orders.v1.Orders/CreateOrder"
    assert table.match("GET", "/v1/orders/ord-1") is not None
    assert table.match("GET", "/v1/orders") is not None
    assert table.allowed("/v1/orders") == ["GET", "HEAD", "POST"]
    assert table.match("DELETE", "/v1/orders") is None


def test_head_takes_the_route_a_get_of_its_path_takes_unless_that_route_streams(table: RouteTable) -> None:
    head = table.match("HEAD", "/v1/orders/ord-1")
    assert head is not None
    assert (head.route.verb, head.route.path, head.variables) == (
        "GET",
        "/shop.orders.v1.Orders/GetOrder",
        {"order_id": "ord-1"},
    )
    # The watch is a stream: no HEAD, and never GetOrder's route instead, though {order_id} would take "ord-1:watch".
    assert table.match("HEAD", "/v1/orders/ord-1:watch") is None
    assert table.allowed("/v1/orders/ord-1:watch") == ["GET"]
    assert table.allowed("/v1/orders/ord-1") == ["GET", "HEAD"]
    assert table.match("HEAD", "/v1/nothing") is None
    assert table.allowed("/v1/nothing") == []


def test_a_method_without_annotation_is_reachable_by_the_default_post(table: RouteTable) -> None:
    found = table.match("POST", "/shop.inventory.v1.Inventory/Release")
    assert found is not None
    assert (found.route.path, found.route.body) == ("/shop.inventory.v1.Inventory/Release", "*")


def test_an_edge_with_no_services_is_a_config_error_saying_what_to_add() -> None:
    with pytest.raises(ConfigError, match=r"edge\.services.*shop\.orders\.v1\.Orders: orders"):
        build_routes({}, load_pool(()))


def test_a_service_missing_from_the_descriptors_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"edge\.services\.shop\.nowhere\.v1\.Nothing"):
        build_routes({"shop.nowhere.v1.Nothing": "nothing"}, load_pool(()))


def test_two_methods_on_one_verb_and_template_are_a_config_error_naming_both(tmp_path: Path) -> None:
    def reserve_on_get_stocks_route(file: descriptor_pb2.FileDescriptorProto) -> None:
        if file.package == "shop.inventory.v1":
            rule = file.service[0].method[1].options.Extensions[annotations_pb2.http]
            rule.Clear()
            rule.get = "/v1/inventory/items/{reservation_id}"  # GetStock's template with another variable name

    path = tmp_path / "conflict.pb"
    path.write_bytes(descriptor_set(inventory_pb2.DESCRIPTOR, edit=reserve_on_get_stocks_route).SerializeToString())
    with pytest.raises(ConfigError) as refused:
        build_routes({"shop.inventory.v1.Inventory": "inventory"}, load_pool([path]))
    text = str(refused.value)
    assert "/shop.inventory.v1.Inventory/GetStock" in text
    assert "/shop.inventory.v1.Inventory/Reserve" in text
    assert "GET /v1/inventory/items/{reservation_id}" in text


def test_a_get_with_a_body_is_a_config_error_since_a_cache_keys_a_get_on_its_url(tmp_path: Path) -> None:
    def body_on_get_stock(file: descriptor_pb2.FileDescriptorProto) -> None:
        if file.package == "shop.inventory.v1":
            file.service[0].method[0].options.Extensions[annotations_pb2.http].body = "*"

    path = tmp_path / "get-body.pb"
    path.write_bytes(descriptor_set(inventory_pb2.DESCRIPTOR, edit=body_on_get_stock).SerializeToString())
    with pytest.raises(ConfigError, match=r"GetStock google\.api\.http.*a GET carries no body"):
        build_routes({"shop.inventory.v1.Inventory": "inventory"}, load_pool([path]))


def test_a_descriptor_set_read_from_a_file_routes_as_the_generated_modules_do(tmp_path: Path) -> None:
    path = write_descriptor_set(tmp_path / "shop.pb", inventory_pb2.DESCRIPTOR)
    table = build_routes({"shop.inventory.v1.Inventory": "inventory"}, load_pool([path]))
    found = table.match("GET", "/v1/inventory/items/sku-1")
    assert found is not None
    assert request_message(found.route, found.variables, (), b"").sku == "sku-1"


def test_additional_bindings_and_custom_verbs_route_to_their_method(tmp_path: Path) -> None:
    def more_bindings(file: descriptor_pb2.FileDescriptorProto) -> None:
        if file.package == "shop.inventory.v1":
            stock = file.service[0].method[0].options.Extensions[annotations_pb2.http]
            stock.additional_bindings.add(get="/v2/stock/{sku}")
            release = file.service[0].method[2].options.Extensions[annotations_pb2.http]
            release.custom.kind = "PURGE"
            release.custom.path = "/v1/reservations/{reservation_id}"

    path = tmp_path / "more.pb"
    path.write_bytes(descriptor_set(inventory_pb2.DESCRIPTOR, edit=more_bindings).SerializeToString())
    table = build_routes({"shop.inventory.v1.Inventory": "inventory"}, load_pool([path]))
    for verb, url, method, bound in [
        ("GET", "/v1/inventory/items/s-1", "GetStock", {"sku": "s-1"}),
        ("GET", "/v2/stock/s-2", "GetStock", {"sku": "s-2"}),
        ("PURGE", "/v1/reservations/r-1", "Release", {"reservation_id": "r-1"}),
    ]:
        found = table.match(verb, url)
        assert found is not None, (verb, url)
        assert (found.route.path, found.variables) == (f"/shop.inventory.v1.Inventory/{method}", bound)
    assert table.match("POST", "/shop.inventory.v1.Inventory/Release") is None  # annotated: no default route


def test_a_descriptor_set_that_is_not_one_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.pb"
    path.write_bytes(b"\xff\xff not a descriptor set")
    with pytest.raises(ConfigError, match=r"edge\.descriptor_sets\[0\]"):
        load_pool([path])
    assert descriptor_pool.Default() is load_pool(())


def test_path_body_and_query_fill_the_request(table: RouteTable) -> None:
    found = table.match("POST", "/v1/inventory/items/sku-tea:reserve")
    assert found is not None
    body = json.dumps({"reservationId": "r-1", "quantity": 2}).encode()
    message = request_message(found.route, found.variables, (), body)
    assert message == inventory_pb2.ReserveRequest(reservation_id="r-1", sku="sku-tea", quantity=2)

    listed = table.match("GET", "/v1/orders")
    assert listed is not None
    query = [("page_size", "10"), ("pageToken", "t-1"), ("filter", "state=PAID")]
    message = request_message(listed.route, listed.variables, query, b"")
    assert message == orders_pb2.ListOrdersRequest(page_size=10, page_token="t-1", filter="state=PAID")


@pytest.mark.parametrize(
    ("path", "query", "body", "field"),
    [
        ("/v1/orders", [], b'{"customerId": "c-1", "colour": "red"}', "colour"),  # unknown body field
        ("/v1/orders", [], b'{"items": [{"sku": "s", "quantity": "many"}]}', "items"),  # wrong type
        ("/v1/orders", [], b'{"customerId": ', "body"),  # not JSON
        ("/v1/orders", [], b"[1, 2]", "body"),  # not an object
        ("/v1/orders/ord-1", [("colour", "red")], b"", "colour"),  # unknown query parameter
    ],
)
def test_a_request_that_cannot_become_the_message_names_the_field(
    table: RouteTable, path: str, query: list[tuple[str, str]], body: bytes, field: str
) -> None:
    verb = "POST" if body else "GET"
    found = table.match(verb, path)
    assert found is not None
    with pytest.raises(BadRequest) as refused:
        request_message(found.route, found.variables, query, body)
    assert refused.value.field.startswith(field), refused.value


def test_the_reply_is_proto3_json(table: RouteTable) -> None:
    found = table.match("GET", "/v1/orders/ord-1")
    assert found is not None
    order = orders_pb2.Order(order_id="ord-1", customer_id="c-1", items=[orders_pb2.LineItem(sku="s", quantity=2)])
    assert json.loads(response_json(found.route, order)) == {
        "orderId": "ord-1",
        "customerId": "c-1",
        "items": [{"sku": "s", "quantity": 2}],
    }


@pytest.mark.parametrize(
    ("header", "seconds"), [(None, None), ("250m", 0.25), ("2S", 2.0), ("1M", 60.0), ("5000u", 0.005)]
)
def test_grpc_timeout_header_is_read_in_seconds(header: str | None, seconds: float | None) -> None:
    assert grpc_timeout(header) == seconds


@pytest.mark.parametrize("header", ["", "250", "1.5S", "123456789m", "10ms", "-1S"])
def test_a_malformed_grpc_timeout_is_a_bad_request(header: str) -> None:
    with pytest.raises(BadRequest, match="grpc-timeout"):
        grpc_timeout(header)


def test_every_grpc_code_has_its_standard_http_status() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    expected = {"NOT_FOUND": 404, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "CANCELLED": 499, "ABORTED": 409}
    assert {code.name: http_status(code) for code in grpc.StatusCode if code.name in expected} == expected


def test_the_status_in_the_trailers_is_answered_as_json_with_its_error_info() -> None:
    status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message="no healthy endpoint")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="NO_HEALTHY_ENDPOINT", domain="meshlet.dev"))
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((DETAILS_KEY, status.SerializeToString())),
        details="no healthy endpoint",
    )
    answered = json.loads(status_json(status_of(error)))
    assert answered["code"] == 14
    assert answered["message"] == "no healthy endpoint"
    assert answered["details"] == [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "NO_HEALTHY_ENDPOINT", "domain": "meshlet.dev"}
    ]
    plain = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "no sku")
    assert json.loads(status_json(status_of(plain))) == {"code": 5, "message": "no sku", "details": []}


def test_a_detail_of_the_upstreams_own_type_is_written_from_the_routes_pool_else_kept_as_bytes(tmp_path: Path) -> None:
    from meshlet_api.mapping.v1 import mapping_pb2

    elsewhere = descriptor_pb2.FileDescriptorSet()  # a type this process's own pool cannot name
    file = elsewhere.file.add(name="elsewhere.proto", package="meshlet.elsewhere.v1", syntax="proto3")
    mapping_pb2.FaultDetail.DESCRIPTOR.CopyToProto(file.message_type.add())
    path = tmp_path / "elsewhere.pb"
    path.write_bytes(elsewhere.SerializeToString())
    pool = load_pool([path])
    status = status_pb2.Status(code=9, message="not now")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="BUSY", domain="mapping"))
    fault = status.details.add()
    fault.type_url = "type.googleapis.com/meshlet.elsewhere.v1.FaultDetail"
    fault.value = mapping_pb2.FaultDetail(hint="later", attempt=2**53 + 1).SerializeToString()
    info, written = json.loads(status_json(status, pool))["details"]
    assert info == {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "BUSY", "domain": "mapping"}
    assert written == {"@type": fault.type_url, "hint": "later", "attempt": "9007199254740993"}
    kept = json.loads(status_json(status))["details"][1]  # no pool names it: its bytes are kept
    assert kept == {"@type": fault.type_url, "value": base64.b64encode(fault.value).decode()}
    corrupt = status_pb2.Status(code=3, message="bad detail")
    corrupt.details.add(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff\xff\xff")
    kept = json.loads(status_json(corrupt))["details"][0]  # not an ErrorInfo at all: kept, not a crash
    assert kept == {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "value": "////"}


def test_a_boolean_from_the_query_or_the_path_is_read_as_json_reads_true_and_false(tmp_path: Path) -> None:
    from meshlet_api.mapping.v1 import mapping_pb2

    pool = load_pool([write_descriptor_set(tmp_path / "mapping.pb", mapping_pb2.DESCRIPTOR)])
    table = build_routes({"meshlet.mapping.v1.Library": "mapping"}, pool)
    found = table.match("DELETE", "/v1/books/b1")
    assert found is not None
    for text, expected in [("true", True), ("False", False), ("1", True), ("f", False)]:
        message = request_message(found.route, found.variables, [("force", text), ("etag", "e")], b"")
        assert message.force is expected
    with pytest.raises(BadRequest) as refused:
        request_message(found.route, found.variables, [("force", "maybe")], b"")
    assert refused.value.field == "force"


def test_the_longest_grpc_timeout_is_capped_where_grpcs_core_still_takes_it() -> None:
    assert grpc_timeout("99999999H") == MAX_TIMEOUT_S
    assert grpc_timeout("250m") == 0.25


@pytest.mark.parametrize(
    "query",
    [[("skus.x", "b"), ("skus", "a")], [("skus", "a"), ("skus.x", "b")]],
    ids=["parts-then-whole", "whole-then-parts"],
)
def test_a_query_that_sets_a_field_whole_and_by_its_parts_is_a_400(query: list[tuple[str, str]]) -> None:
    # the first order raised AttributeError: a 500 from a bug of the edge's, not the client's 400
    from meshlet_shop_api.inventory.v2 import inventory_pb2 as v2

    assert v2.DESCRIPTOR is not None
    table = build_routes({"shop.inventory.v2.Inventory": "inventory"}, load_pool(()))
    found = table.match("GET", "/v2/inventory/items")
    assert found is not None
    with pytest.raises(BadRequest):
        request_message(found.route, {}, query, b"")
