"""The edge's generated documentation, deprecations and versions side by side, as an operator runs it: a dev agent,
the shop's inventory (v1, deprecated, and v2 in one process) behind a sidecar, and the edge in front with a
descriptor set compiled with its source info; orders is configured but never started (its routes answer 503).

Outside tools judge the document: openapi-spec-validator, schemathesis (property-based requests at the live edge:
no response may break the document, no 5xx but the documented 503 and 504) and Debian's chromium (the /docs page,
rendered offline, lists the shop's operations)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

from tests.integration.test_edge import call, http, module_procs  # noqa: F401 (fixtures)
from tests.support.agents import start_dev_agent
from tests.support.descriptor_sets import compile_descriptor_set
from tests.support.processes import Child, Processes, free_port, http_ok, wait_until
from tests.support.sidecars import START_S, start_sidecar, write_config

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "edge-docs.png"
SINCE = 1780272000  # 2026-06-01T00:00:00Z
SUNSET = "Tue, 01 Jun 2027 00:00:00 GMT"
SHOP_PROTOS = (
    "meshlet_shop_api/inventory/v1/inventory.proto",
    "meshlet_shop_api/inventory/v2/inventory.proto",
    "meshlet_shop_api/orders/v1/orders.proto",
)
SCHEMATHESIS_CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["1XX", "2XX", "3XX", "4XX", "503", "504"]
"""


@dataclass
class Front:
    edge: Child
    url: str


@pytest.fixture(scope="module")
def front(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Front:  # noqa: F811
    folder = tmp_path_factory.mktemp("edge-docs")
    agent = start_dev_agent(module_procs)
    port = free_port()
    argv = [sys.executable, "-m", "meshlet_shop.inventory", "--port", str(port), "--instance-id", "inventory-1"]
    inventory = module_procs.start(argv, name="inventory-1")
    wait_until(lambda: f"listening on {port}" in inventory.output() or not inventory.alive(), START_S, "inventory")
    assert inventory.alive(), inventory.output()
    plaintext = {"tls": {"source": "off"}, "consul": {"address": agent.url}}
    service = {"name": "inventory", "check_ttl": "1s", "drain_grace": "1s"}
    start_sidecar(module_procs, folder, "inventory", {**plaintext, "service": service}, app=f"127.0.0.1:{port}")

    descriptors = compile_descriptor_set(folder / "shop.pb", *SHOP_PROTOS)
    edge_config = {
        **plaintext,
        "service": {"name": "shop-edge"},
        "edge": {
            "services": {
                "shop.inventory.v1.Inventory": "inventory",
                "shop.inventory.v2.Inventory": "inventory",
                "shop.orders.v1.Orders": "orders",
            },
            "descriptor_sets": [str(descriptors)],
            "deprecations": {
                "shop.inventory.v1.Inventory.GetStock": {
                    "since": "2026-06-01",
                    "sunset": "2027-06-01",
                    "successor": "/docs#/shop.inventory.v2.Inventory/shop.inventory.v2.Inventory.GetItem",
                }
            },
        },
    }
    config_path = write_config(folder / "edge.yaml", edge_config)
    listen, admin = free_port(), free_port()
    edge = module_procs.start(
        [
            sys.executable, "-m", "meshlet_edge", "--config", str(config_path),
            "--listen", f"127.0.0.1:{listen}", "--admin-addr", f"127.0.0.1:{admin}",
        ],
        name="edge-docs",
    )  # fmt: skip
    admin_url = f"http://127.0.0.1:{admin}"
    try:
        wait_until(lambda: http_ok(admin_url + "/ready") or not edge.alive(), START_S, "the edge to turn ready")
    except AssertionError:
        raise AssertionError(f"the edge never turned ready:\n{edge.output()}") from None
    assert edge.alive(), f"the edge exited at start:\n{edge.output()}"
    return Front(edge, f"http://127.0.0.1:{listen}")


async def fetch(http, url: str) -> tuple[int, str, str]:  # noqa: F811
    async with http.get(url) as response:
        return response.status, response.content_type, await response.text()


# ------------------------------------------------------------------------------------------ the document


async def test_the_document_is_valid_openapi_3_1_with_every_route(front: Front, http) -> None:  # noqa: F811
    status, kind, text = await fetch(http, front.url + "/openapi.json")
    assert (status, kind) == (200, "application/json")
    document = json.loads(text)
    validate(document)  # raises naming what breaks the specification
    assert document["openapi"] == "3.1.0"
    operations = {(verb.upper(), path) for path, item in document["paths"].items() for verb in item}
    assert operations >= {
        ("GET", "/v1/inventory/items/{sku}"),
        ("POST", "/v1/inventory/items/{sku}:reserve"),
        ("POST", "/shop.inventory.v1.Inventory/Release"),
        ("GET", "/v2/inventory/items/{name}"),
        ("GET", "/v2/inventory/items"),
        ("POST", "/v2/inventory/items/{name}:reserve"),
        ("GET", "/v1/orders"),
        ("GET", "/v1/orders/{order_id}"),
    }
    status, kind, text = await fetch(http, front.url + "/openapi.yaml")
    assert (status, kind) == (200, "application/yaml")
    assert yaml.safe_load(text) == document


async def test_schemas_follow_proto3_json_and_carry_the_protos_comments(front: Front, http) -> None:  # noqa: F811
    document = json.loads((await fetch(http, front.url + "/openapi.json"))[2])
    schemas = document["components"]["schemas"]
    item = schemas["shop.inventory.v2.Item"]
    assert item["description"] == "An item of the catalog with its stock."
    properties = item["properties"]
    assert properties["priceCents"]["type"] == "string"  # int64
    assert properties["priceCents"]["description"] == "The price of one unit, in euro cents."
    assert properties["readTime"]["format"] == "date-time"  # google.protobuf.Timestamp
    assert properties["availability"] == {"$ref": "#/components/schemas/shop.inventory.v2.Availability"}
    availability = schemas["shop.inventory.v2.Availability"]
    assert availability["enum"] == ["AVAILABILITY_UNSPECIFIED", "IN_STOCK", "LOW", "OUT_OF_STOCK"]
    assert "Fewer than 10 units left" in availability["description"]

    listing = document["paths"]["/v2/inventory/items"]["get"]
    query = {p["name"]: p for p in listing["parameters"] if p["in"] == "query"}
    assert query["skus"]["schema"]["type"] == "array"  # repeated
    assert query["filter.availability"]["schema"]["items"]["$ref"].endswith("shop.inventory.v2.Availability")
    reserve = document["paths"]["/v2/inventory/items/{name}:reserve"]["post"]
    assert "inventory/items/{name}" in reserve["parameters"][0]["description"]
    assert reserve["responses"]["503"]["content"]["application/json"]["schema"]["$ref"].endswith("google.rpc.Status")


async def test_deprecated_operations_are_marked_in_the_document(front: Front, http) -> None:  # noqa: F811
    document = json.loads((await fetch(http, front.url + "/openapi.json"))[2])
    assert document["paths"]["/v1/inventory/items/{sku}"]["get"]["deprecated"] is True
    assert document["paths"]["/v1/inventory/items/{sku}:reserve"]["post"]["deprecated"] is True
    assert "deprecated" not in document["paths"]["/v2/inventory/items/{name}"]["get"]
    assert "deprecated" not in document["paths"]["/v1/orders"]["get"]


# ------------------------------------------------------------------------------------------ versions and headers


async def test_v1_answers_with_deprecation_and_sunset_and_v2_without(front: Front, http) -> None:  # noqa: F811
    status, body, response = await call(http, "GET", front.url + "/v1/inventory/items/sku-tea")
    assert status == 200, body
    assert response.headers["Deprecation"] == f"@{SINCE}"
    assert response.headers["Sunset"] == SUNSET
    assert response.headers["Link"].endswith('>; rel="successor-version"')

    status, body, response = await call(http, "GET", front.url + "/v1/inventory/items/sku-unicorn")
    assert status == 404, body
    assert response.headers["Deprecation"] == f"@{SINCE}"  # an error of a deprecated route says so too

    request = {"reservationId": "r-docs-1", "quantity": 1}
    status, body, response = await call(http, "POST", front.url + "/v1/inventory/items/sku-mug:reserve", request)
    assert status == 200, body
    undated = int(response.headers["Deprecation"].removeprefix("@"))  # no date configured: the edge's start
    assert time.time() - 600 < undated <= time.time()
    assert "Sunset" not in response.headers
    assert "edge.deprecations.shop.inventory.v1.Inventory.since" in front.edge.output()

    status, body, response = await call(http, "GET", front.url + "/v2/inventory/items/sku-tea")
    assert status == 200, body
    assert "Deprecation" not in response.headers
    assert "Sunset" not in response.headers
    assert body["name"] == "inventory/items/sku-tea"
    assert body["availability"] == "IN_STOCK"
    assert isinstance(body["available"], str)  # int64 in proto3 JSON


async def test_v2_reads_repeated_and_nested_query_parameters(front: Front, http) -> None:  # noqa: F811
    url = front.url + "/v2/inventory/items?skus=sku-tea&skus=sku-teapot&filter.availability=LOW"
    status, body, _ = await call(http, "GET", url)
    assert status == 200, body
    assert [item["sku"] for item in body["items"]] == ["sku-teapot"]  # 3 in stock: LOW
    status, body, _ = await call(http, "GET", front.url + "/v2/inventory/items/sku-tea")
    assert status == 200


# ------------------------------------------------------------------------------------------ outside tools


def test_schemathesis_finds_no_response_that_breaks_the_document(front: Front, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
    checks += "response_schema_conformance"
    argv = [
        str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run", front.url + "/openapi.json",
        "--checks", checks, "--phases", "examples,coverage,fuzzing", "--max-examples", "10", "--seed", "13",
        "--workers", "1", "--generation-database", "none", "--no-color", "--request-timeout", "10",
        "--suppress-health-check", "filter_too_much",  # its own filtering of path values, not the edge
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=170, cwd=tmp_path, check=False)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-6000:]
    assert "No issues found" in report or "passed" in report, report[-3000:]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is not installed: apt-get install chromium (.ci/run does)")
    return found


def _headless(*flags: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        f"--user-data-dir={cwd / 'profile'}", "--virtual-time-budget=15000", *flags,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def test_the_docs_page_renders_offline_in_chromium_with_the_shops_operations(front: Front, tmp_path: Path) -> None:
    done = _headless("--dump-dom", front.url + "/docs", cwd=tmp_path)
    dom = done.stdout
    assert "swagger-ui" in dom, done.stderr[-3000:]
    for shown in (
        "shop.inventory.v2.Inventory.GetItem",
        "shop.inventory.v2.Inventory.ListItems",
        "shop.inventory.v1.Inventory.GetStock",
        "shop.orders.v1.Orders.ListOrders",
        "/v2/inventory/items/{name}",
    ):
        assert shown in dom, f"{shown} is not on the rendered page:\n{dom[-3000:]}"
    assert "opblock-deprecated" in dom  # v1's operations shown struck through

    shot = tmp_path / "edge-docs.png"
    done = _headless(f"--screenshot={shot}", "--window-size=1280,1500", front.url + "/docs", cwd=tmp_path)
    assert shot.exists(), done.stderr[-3000:]
    assert shot.stat().st_size > 10_000, done.stderr[-3000:]
    if os.environ.get("MESHLET_UPDATE_SCREENSHOTS"):  # docs/edge-docs.png, committed: what /docs looks like
        shutil.copyfile(shot, SCREENSHOT)


def test_with_docs_off_the_edge_serves_no_document_and_no_page(procs: Processes, tmp_path: Path) -> None:
    descriptors = compile_descriptor_set(tmp_path / "v2.pb", SHOP_PROTOS[1])
    config = {
        "tls": {"source": "off"},
        "consul": {"address": "http://127.0.0.1:1"},
        "edge": {
            "services": {"shop.inventory.v2.Inventory": "inventory"},
            "descriptor_sets": [str(descriptors)],
            "docs": False,
        },
    }
    config_path = write_config(tmp_path / "edge.yaml", config)
    listen = free_port()
    argv = [
        sys.executable, "-m", "meshlet_edge", "--config", str(config_path),
        "--listen", f"127.0.0.1:{listen}", "--admin-addr", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    edge = procs.start(argv, name="edge-no-docs")
    wait_until(lambda: f"edge listening on {listen}" in edge.output() or not edge.alive(), START_S, "the edge")
    assert edge.alive(), edge.output()
    for page in ("/openapi.json", "/openapi.yaml", "/docs"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{listen}{page}", timeout=10)
        assert refused.value.code == 404
        assert json.loads(refused.value.read())["code"] == 5  # NOT_FOUND, in the one error shape
