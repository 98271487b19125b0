"""meshlet-edge as an operator runs it: a dev agent, the shop's inventory (a plain grpcio app) behind a sidecar,
and the edge process in front, each a real process on loopback; the test is an HTTP client outside the mesh.

Orders is configured on the edge but never started, so its routes show what the mesh answers when an upstream
has no healthy endpoint. Inventory reads a faults file, so one test can slow it down to pass a deadline."""

from __future__ import annotations

import io
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from meshlet_shop_api.inventory.v1 import inventory_pb2
from meshlet_shop_api.orders.v1 import orders_pb2
from tests.support.agents import start_dev_agent
from tests.support.descriptor_sets import write_descriptor_set
from tests.support.processes import Child, Processes, free_port, http_ok, processes, wait_until
from tests.support.sidecars import START_S, start_sidecar, write_config

WAIT_S = 20.0  # bounds waiting for a process or a log line, never a timing assertion
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@dataclass
class Front:
    edge: Child
    url: str
    admin_url: str
    inventory: Child
    faults: Path


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


@pytest.fixture(scope="module")
def front(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Front:
    folder = tmp_path_factory.mktemp("edge")
    agent = start_dev_agent(module_procs)
    faults = folder / "faults.json"
    faults.write_text(json.dumps({"latency_ms": 0}))
    port = free_port()
    argv = [sys.executable, "-m", "meshlet_shop.inventory", "--port", str(port), "--instance-id", "inventory-1"]
    inventory = module_procs.start([*argv, "--faults-file", str(faults)], name="inventory-1")
    wait_until(lambda: f"listening on {port}" in inventory.output() or not inventory.alive(), START_S, "inventory")
    assert inventory.alive(), inventory.output()
    plaintext = {"tls": {"source": "off"}, "consul": {"address": agent.url}}
    service = {"name": "inventory", "check_ttl": "1s", "drain_grace": "1s"}
    start_sidecar(module_procs, folder, "inventory", {**plaintext, "service": service}, app=f"127.0.0.1:{port}")

    descriptors = write_descriptor_set(folder / "shop.pb", inventory_pb2.DESCRIPTOR, orders_pb2.DESCRIPTOR)
    edge_config = {
        **plaintext,
        "service": {"name": "edge"},
        "edge": {
            "services": {"shop.inventory.v1.Inventory": "inventory", "shop.orders.v1.Orders": "orders"},
            "descriptor_sets": [str(descriptors)],
        },
    }
    config_path = write_config(folder / "edge.yaml", edge_config)
    listen, admin = free_port(), free_port()
    edge = module_procs.start(
        [
            sys.executable, "-m", "meshlet_edge", "--config", str(config_path),
            "--listen", f"127.0.0.1:{listen}", "--admin-addr", f"127.0.0.1:{admin}",
        ],
        name="edge",
    )  # fmt: skip
    admin_url = f"http://127.0.0.1:{admin}"
    try:
        wait_until(lambda: http_ok(admin_url + "/ready") or not edge.alive(), START_S, "the edge to turn ready")
    except AssertionError:
        raise AssertionError(f"the edge never turned ready:\n{edge.output()}") from None
    assert edge.alive(), f"the edge exited at start:\n{edge.output()}"
    return Front(edge, f"http://127.0.0.1:{listen}", admin_url, inventory, faults)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, **kwargs: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    data = body if isinstance(body, bytes | io.BytesIO) or body is None else json.dumps(body).encode()
    if data is not None:  # aiohttp would say application/octet-stream, which the edge refuses (415)
        kwargs["headers"] = {"Content-Type": "application/json", **kwargs.get("headers", {})}
    async with http.request(method, url, data=data, **kwargs) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json(), response


def detail(status: dict[str, Any], type_url: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [d for d in status.get("details", []) if d["@type"] == type_url]
    assert found, f"no {type_url} in {status}"
    return found[0]


# ------------------------------------------------------------------------------------------ answers


async def test_get_binds_the_path_variable_and_answers_the_reply_as_json(front: Front, http) -> None:
    status, body, _ = await call(http, "GET", front.url + "/v1/inventory/items/sku-tea")
    assert status == 200, body
    assert body["sku"] == "sku-tea"
    assert body["available"] > 0


async def test_post_takes_the_body_and_the_path_and_answers_camel_case_json(front: Front, http) -> None:
    request = {"reservationId": "r-edge-1", "quantity": 2}
    status, body, _ = await call(http, "POST", front.url + "/v1/inventory/items/sku-mug:reserve", request)
    assert status == 200, body
    assert body["reservationId"] == "r-edge-1"
    assert body["servedBy"] == "inventory-1"
    assert body["remaining"] >= 0


async def test_a_method_without_annotation_answers_on_the_default_post(front: Front, http) -> None:
    url = front.url + "/shop.inventory.v1.Inventory/Release"
    status, body, _ = await call(http, "POST", url, {"reservationId": "r-never-made"})
    assert status == 200, body
    assert body["reservationId"] == "r-never-made"
    assert body.get("released", False) is False


# ------------------------------------------------------------------------------------------ errors


async def test_the_upstreams_own_error_keeps_its_code_mapping_and_error_info(front: Front, http) -> None:
    status, body, _ = await call(http, "GET", front.url + "/v1/inventory/items/sku-unicorn")
    assert status == 404, body
    assert body["code"] == 5
    assert "sku-unicorn" in body["message"]
    assert detail(body, ERROR_INFO)["reason"] == "UNKNOWN_SKU"


async def test_an_unknown_route_is_a_404_status_and_a_wrong_verb_a_405_with_allow(front: Front, http) -> None:
    status, body, _ = await call(http, "GET", front.url + "/v1/nothing/here")
    assert status == 404
    assert body["code"] == 5
    assert "no route for GET /v1/nothing/here" in body["message"]
    status, body, response = await call(http, "DELETE", front.url + "/v1/orders")
    assert status == 405
    assert response.headers["Allow"] == "GET, HEAD, POST"  # HEAD wherever a GET is answered whole
    assert body["code"] == 12


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"reservationId": "r-1", "colour": "red"}', "colour"),
        (b'{"quantity": "lots"}', "quantity"),
        (b'{"reservationId": ', "body"),
    ],
    ids=["unknown-field", "wrong-type", "malformed-json"],
)
async def test_a_body_that_is_not_the_message_is_a_400_naming_the_field(front: Front, http, body, field) -> None:
    status, answer, _ = await call(http, "POST", front.url + "/v1/inventory/items/sku-tea:reserve", body)
    assert status == 400, answer
    assert answer["code"] == 3
    violations = detail(answer, BAD_REQUEST)["fieldViolations"]
    assert [v["field"] for v in violations] == [field]


async def test_an_upstream_without_healthy_endpoints_is_a_503_with_meshlets_reason(front: Front, http) -> None:
    request = {"requestId": "q-1", "customerId": "c-1", "items": [{"sku": "sku-tea", "quantity": 1}]}
    status, body, _ = await call(http, "POST", front.url + "/v1/orders", request)
    assert status == 503, body
    assert body["code"] == 14
    info = detail(body, ERROR_INFO)
    assert (info["reason"], info["domain"]) == ("NO_HEALTHY_ENDPOINT", "meshlet.dev")
    assert "orders" in body["message"]


async def test_grpc_timeout_bounds_the_call_and_its_expiry_is_a_504(front: Front, http) -> None:
    url = front.url + "/v1/inventory/items/sku-tea"
    status, body, _ = await call(http, "GET", url, headers={"grpc-timeout": "soon"})
    assert status == 400
    assert detail(body, BAD_REQUEST)["fieldViolations"][0]["field"] == "grpc-timeout"

    front.faults.write_text(json.dumps({"latency_ms": 3000}))
    wait_until(lambda: "latency_ms=3000" in front.inventory.output(), WAIT_S, "inventory to read its slower faults")
    try:
        status, body, _ = await call(http, "GET", url, headers={"grpc-timeout": "200m"})
        assert status == 504, body
        assert body["code"] == 4
    finally:
        front.faults.write_text(json.dumps({"latency_ms": 0}))
        wait_until(lambda: "latency_ms=0" in front.inventory.output(), WAIT_S, "inventory to read its faults back")


async def test_a_body_over_the_limit_is_a_413_status(front: Front, http) -> None:
    too_big = io.BytesIO(b'{"reservationId": "' + b"x" * (2 << 20) + b'"}')
    status, body, _ = await call(http, "POST", front.url + "/v1/inventory/items/sku-tea:reserve", too_big)
    assert status == 413
    assert body["code"] == 8
    assert "smaller" in body["message"]


# ------------------------------------------------------------------------------------------ lifecycle


def test_a_listen_port_another_process_holds_exits_1_naming_the_flag(procs: Processes, tmp_path: Path) -> None:
    descriptors = write_descriptor_set(tmp_path / "shop.pb", inventory_pb2.DESCRIPTOR)
    config = {
        "tls": {"source": "off"},
        "consul": {"address": "http://127.0.0.1:1"},
        "edge": {"services": {"shop.inventory.v1.Inventory": "inventory"}, "descriptor_sets": [str(descriptors)]},
    }
    config_path = write_config(tmp_path / "edge.yaml", config)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        argv = [
            sys.executable, "-m", "meshlet_edge", "--config", str(config_path),
            "--listen", f"127.0.0.1:{taken}", "--admin-addr", f"127.0.0.1:{free_port()}",
        ]  # fmt: skip
        child = procs.start(argv, name="edge-taken")
        assert child.wait(START_S) == 1
    output = child.output()
    assert f"127.0.0.1:{taken}" in output
    assert "--listen" in output
    assert "Traceback" not in output


def test_a_service_in_no_descriptor_set_exits_2_naming_it(procs: Processes, tmp_path: Path) -> None:
    config = {"tls": {"source": "off"}, "edge": {"services": {"shop.nowhere.v1.Nothing": "nothing"}}}
    config_path = write_config(tmp_path / "edge.yaml", config)
    argv = [sys.executable, "-m", "meshlet_edge", "--config", str(config_path), "--listen", f"127.0.0.1:{free_port()}"]
    child = procs.start(argv, name="edge-bad")
    assert child.wait(START_S) == 2
    output = child.output()
    assert "edge.services.shop.nowhere.v1.Nothing" in output
    assert "edge.descriptor_sets" in output
    assert "Traceback" not in output


def test_sigterm_stops_the_edge_with_exit_0(front: Front) -> None:
    assert http_ok(front.admin_url + "/live")
    front.edge.signal(signal.SIGTERM)
    assert front.edge.wait(WAIT_S) == 0, front.edge.output()
    assert "Traceback" not in front.edge.output()
