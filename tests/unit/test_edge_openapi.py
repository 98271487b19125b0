"""The edge's OpenAPI document and deprecations, pure: schemas by the proto3 JSON mapping (maps, oneofs, recursion,
well-known types), templates as OpenAPI paths, comments from source info, and the Deprecation/Sunset headers."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from openapi_spec_validator import validate

from meshlet.config.schema import DeprecationPolicy
from meshlet.errors import ConfigError
from meshlet_edge import openapi
from meshlet_edge.docs import refuse_shadowing, source_files
from meshlet_edge.lifecycle import deprecations, undated
from meshlet_edge.routes import RouteTable, build_routes, load_pool
from meshlet_shop_api.inventory.v1 import inventory_pb2
from meshlet_shop_api.inventory.v2 import inventory_pb2 as inventory_v2_pb2
from tests.support.descriptor_sets import compile_descriptor_set, descriptor_set

SERVICES = {"shop.inventory.v1.Inventory": "inventory", "shop.inventory.v2.Inventory": "inventory"}
STARTED = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def table() -> RouteTable:
    assert inventory_pb2.DESCRIPTOR is not None  # importing the modules puts their services in the default pool
    assert inventory_v2_pb2.DESCRIPTOR is not None
    return build_routes(SERVICES, load_pool(()))


def test_a_recursive_message_with_a_oneof_is_a_component_that_refers_to_itself() -> None:
    schemas = openapi.Schemas({})
    assert schemas.message(http_pb2.HttpRule.DESCRIPTOR) == {"$ref": "#/components/schemas/google.api.HttpRule"}
    rule = schemas.components["google.api.HttpRule"]
    assert rule["properties"]["additionalBindings"]["items"] == {"$ref": "#/components/schemas/google.api.HttpRule"}
    assert rule["properties"]["responseBody"] == {"type": "string"}  # lowerCamelCase
    assert "At most one of get, put, post, delete, patch, custom (pattern)." in rule["description"]
    assert rule["additionalProperties"] is False  # the edge refuses unknown fields


def test_maps_are_objects_and_well_known_types_take_their_json_form() -> None:
    schemas = openapi.Schemas({})
    schemas.message(error_details_pb2.ErrorInfo.DESCRIPTOR)
    schemas.message(error_details_pb2.RetryInfo.DESCRIPTOR)
    metadata = schemas.components["google.rpc.ErrorInfo"]["properties"]["metadata"]
    assert metadata == {"type": "object", "additionalProperties": {"type": "string"}}
    delay = schemas.components["google.rpc.RetryInfo"]["properties"]["retryDelay"]
    assert delay["type"] == "string"  # google.protobuf.Duration: "1.5s"
    assert "google.protobuf.Duration" not in schemas.components


def test_templates_become_openapi_paths_with_their_parameters(table: RouteTable) -> None:
    document = openapi.document(table.routes, title="shop", version="1")
    validate(document)
    reserve = document["paths"]["/v2/inventory/items/{name}:reserve"]["post"]
    assert [p["name"] for p in reserve["parameters"] if p["in"] == "path"] == ["name"]
    assert "requestBody" in reserve
    body = reserve["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"reservationId", "quantity"}  # name is bound by the path
    listing = document["paths"]["/v2/inventory/items"]["get"]
    assert [p["name"] for p in listing["parameters"] if p["in"] == "query"] == ["skus", "filter.availability"]
    assert document["paths"]["/shop.inventory.v1.Inventory/Release"]["post"]["operationId"] == (
        "shop.inventory.v1.Inventory.Release"
    )


def test_comments_come_from_source_info(tmp_path: Path) -> None:
    compiled = compile_descriptor_set(tmp_path / "v2.pb", "meshlet_shop_api/inventory/v2/inventory.proto")
    files = openapi.comments_of(source_files([compiled]))
    assert files["shop.inventory.v2.Availability.LOW"] == "Fewer than 10 units left: order soon."
    assert files["shop.inventory.v2.Inventory.ListItems"] == "Several items at once, by sku and by availability."
    assert files["shop.inventory.v2.Item.price_cents"] == "The price of one unit, in euro cents."
    assert files["shop.inventory.v2"].startswith("Stock levels and reservations, version 2")


def test_a_deprecated_service_answers_deprecation_and_the_configured_dates(table: RouteTable) -> None:
    policy = DeprecationPolicy.model_validate(
        {"since": "2026-06-01", "sunset": "2027-06-01", "successor": "https://shop.example/v2"}
    )
    found = deprecations(table.routes, {"shop.inventory.v1.Inventory.GetStock": policy}, STARTED)
    assert set(found) == {f"/shop.inventory.v1.Inventory/{m}" for m in ("GetStock", "Reserve", "Release")}
    assert found["/shop.inventory.v1.Inventory/GetStock"].headers() == {
        "Deprecation": "@1780272000",
        "Sunset": "Tue, 01 Jun 2027 00:00:00 GMT",
        "Link": '<https://shop.example/v2>; rel="successor-version"',
    }
    assert found["/shop.inventory.v1.Inventory/Reserve"].headers() == {"Deprecation": f"@{int(STARTED.timestamp())}"}
    assert undated(found) == ["shop.inventory.v1.Inventory"]
    document = openapi.document(table.routes, title="shop", version="1", deprecations=found)
    operation = document["paths"]["/v1/inventory/items/{sku}"]["get"]
    assert operation["deprecated"] is True
    assert operation["responses"]["200"]["headers"]["Sunset"]["required"] is True


def test_a_deprecation_for_no_served_service_is_a_config_error(table: RouteTable) -> None:
    with pytest.raises(ConfigError) as raised:
        deprecations(table.routes, {"shop.nowhere.v1.Nothing": DeprecationPolicy()}, STARTED)
    assert "edge.deprecations.shop.nowhere.v1.Nothing" in str(raised.value)


def test_a_sunset_before_its_since_is_refused() -> None:
    with pytest.raises(ValueError, match="must be after since"):
        DeprecationPolicy.model_validate({"since": "2027-06-01", "sunset": "2026-06-01"})


def test_a_rule_on_a_documentation_path_is_a_config_error_while_docs_are_on(tmp_path: Path) -> None:
    def bind_docs(file: descriptor_pb2.FileDescriptorProto) -> None:
        if file.package == "shop.inventory.v2":
            file.service[0].method[0].options.Extensions[annotations_pb2.http].get = "/docs"

    path = tmp_path / "v2.pb"
    path.write_bytes(descriptor_set(inventory_v2_pb2.DESCRIPTOR, edit=bind_docs).SerializeToString())
    routes = build_routes({"shop.inventory.v2.Inventory": "inventory"}, load_pool([path]))
    with pytest.raises(ConfigError) as raised:
        refuse_shadowing(routes)
    assert "GET /docs (/shop.inventory.v2.Inventory/GetItem)" in str(raised.value)
    assert "edge.docs: false" in str(raised.value)


def test_two_verbs_on_one_path_with_different_variable_names_share_one_openapi_path(tmp_path: Path) -> None:
    def reserve_by_id(file: descriptor_pb2.FileDescriptorProto) -> None:
        if file.package == "shop.inventory.v2":  # POST beside GET /v2/{name=inventory/items/*}
            methods = {method.name: method for method in file.service[0].method}
            rule = methods["ReleaseReservation"].options.Extensions[annotations_pb2.http]
            rule.post = "/v2/inventory/items/{reservation_id}"

    path = tmp_path / "v2.pb"
    path.write_bytes(descriptor_set(inventory_v2_pb2.DESCRIPTOR, edit=reserve_by_id).SerializeToString())
    routes = build_routes({"shop.inventory.v2.Inventory": "inventory"}, load_pool([path]))
    document = openapi.document(routes.routes, title="shop", version="1")
    validate(document)
    item = document["paths"]["/v2/inventory/items/{name}"]
    assert set(item) == {"get", "post"}
    assert [p["name"] for p in item["post"]["parameters"] if p["in"] == "path"] == ["name"]
    assert "/v2/inventory/items/{reservation_id}" not in document["paths"]
