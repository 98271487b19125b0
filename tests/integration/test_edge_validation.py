"""Input validation from the protos' buf.validate constraints, at every door, with real processes on loopback:

- the edge (test_edge.py's front: a dev agent, inventory behind a sidecar, the edge process) answers a request
  that breaks a constraint with a 400 whose google.rpc.BadRequest names the field, the rule's id and why, before
  the request leaves: orders has no instance at all, and still a bad order is a 400, not a 503;
- an SDK server (the shop's orders, ``mesh.server()``) and an app behind a sidecar, both with
  ``inbound.validate: true``, answer a plain grpcio caller INVALID_ARGUMENT with the same BadRequest in
  ``grpc-status-details-bin``; the app wrote no validation code for it (the shop's own checks answer with other
  words, and without meshlet's ErrorInfo).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meshlet_shop_api.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshlet_shop_api.orders.v1 import orders_pb2, orders_pb2_grpc
from tests.integration.test_edge import BAD_REQUEST, ERROR_INFO, Front, call, detail, front, http, module_procs
from tests.support.agents import Agent, start_dev_agent
from tests.support.descriptor_sets import write_descriptor_set
from tests.support.processes import Processes, free_port, wait_until
from tests.support.sidecars import START_S, start_sidecar

__all__ = ["front", "http", "module_procs"]  # test_edge.py's fixtures, used here as they are

WAIT_S = 10.0  # the deadline of each call: a bound, never a timing assertion
RESERVE = "/v1/inventory/items/{sku}:reserve"


def violations(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    found = detail(body, BAD_REQUEST)["fieldViolations"]
    return [(v.get("field", ""), v.get("reason", ""), v.get("description", "")) for v in found]


# ------------------------------------------------------------------------------------------ the edge


async def test_a_quantity_out_of_bounds_is_a_400_naming_field_rule_and_why(front: Front, http) -> None:
    url = front.url + RESERVE.format(sku="sku-tea")
    status, body, _ = await call(http, "POST", url, {"reservationId": "r-v-1", "quantity": 0})
    assert status == 400, body
    assert body["code"] == 3
    assert violations(body) == [
        ("quantity", "int32.gt_lte", "must be greater than 0 and less than or equal to 1000"),
    ]
    assert (
        body["message"] == "ReserveRequest is invalid: quantity: must be greater than 0 and less than or equal to 1000"
    )
    info = detail(body, ERROR_INFO)
    assert (info["reason"], info["domain"]) == ("REQUEST_INVALID", "meshlet.dev")
    assert info["metadata"]["method"] == "/shop.inventory.v1.Inventory/Reserve"


async def test_a_bad_sku_in_the_path_is_a_400_with_the_pattern_it_breaks(front: Front, http) -> None:
    status, body, _ = await call(http, "GET", front.url + "/v1/inventory/items/Tea%20Pot!")
    assert status == 400, body
    assert violations(body) == [("sku", "string.pattern", "does not match regex pattern `^[a-z0-9][a-z0-9-]*$`")]
    status, body, _ = await call(http, "GET", front.url + "/v1/inventory/items/" + "a" * 65)
    assert status == 400, body
    assert [(field, rule) for field, rule, _ in violations(body)] == [("sku", "string.max_len")]


async def test_a_valid_request_still_reaches_the_upstream(front: Front, http) -> None:
    status, body, _ = await call(http, "GET", front.url + "/v1/inventory/items/sku-unicorn")
    assert status == 404, body  # well formed, and unknown to inventory: its answer, not the edge's
    assert detail(body, ERROR_INFO)["reason"] == "UNKNOWN_SKU"


async def test_every_violation_of_a_bad_order_is_listed_and_the_order_never_leaves(front: Front, http) -> None:
    order = {"customerId": "c-1", "items": [{"sku": "sku-tea", "quantity": 1}, {"sku": "Mug", "quantity": 5000}]}
    status, body, _ = await call(http, "POST", front.url + "/v1/orders", order)
    # orders has no instance: a request that left would be a 503
    assert status == 400, body
    assert [(field, rule) for field, rule, _ in violations(body)] == [
        ("request_id", "string.min_len"),
        ("items[1].sku", "string.pattern"),
        ("items[1].quantity", "int32.gt_lte"),
    ]
    assert body["message"].endswith("(and 2 more: see the BadRequest details)")


async def test_a_page_size_above_the_maximum_is_a_400(front: Front, http) -> None:
    status, body, _ = await call(http, "GET", front.url + "/v1/orders?pageSize=500")
    assert status == 400, body
    assert violations(body) == [
        ("page_size", "int32.gte_lte", "must be greater than or equal to 0 and less than or equal to 100")
    ]


# ------------------------------------------------------------------------------------------ the inbound stage


@dataclass
class Servers:
    agent: Agent
    orders: str  # the SDK server's address (mesh.server())
    sidecar: str  # the inventory app's sidecar, inbound port: methods from a descriptor set
    learning: str  # a second sidecar in front of the same app: methods from the app's reflection service
    app: str  # the inventory app itself, no mesh in front


@pytest.fixture(scope="module")
def servers(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Servers:
    folder = tmp_path_factory.mktemp("inbound")
    agent = start_dev_agent(module_procs)
    plaintext = {"tls": {"source": "off"}, "consul": {"address": agent.url}}

    orders_port = free_port()
    env = {
        "CONSUL_HTTP_ADDR": agent.url,
        "MESHLET_TLS__SOURCE": "off",
        "MESHLET_SERVICE__CHECK_TTL": "1s",
        "MESHLET_SERVICE__DRAIN_GRACE": "1s",
        "MESHLET_INBOUND__VALIDATE": "true",
    }
    orders = module_procs.start(
        [sys.executable, "-m", "meshlet_shop.orders", "--port", str(orders_port)], name="orders", env=env
    )

    def registered() -> bool:
        return not orders.alive() or orders_port in {int(e["Service"]["Port"]) for e in agent.passing("orders")}

    wait_until(registered, START_S, "orders to register and pass its check")
    assert orders.alive(), orders.output()

    app_port = free_port()
    argv = [sys.executable, "-m", "meshlet_shop.inventory", "--port", str(app_port), "--instance-id", "inventory-v"]
    inventory = module_procs.start(argv, name="inventory-v")
    wait_until(lambda: f"listening on {app_port}" in inventory.output() or not inventory.alive(), START_S, "inventory")
    assert inventory.alive(), inventory.output()
    descriptors = write_descriptor_set(folder / "inventory.pb", inventory_pb2.DESCRIPTOR)
    service = {"check_ttl": "1s", "drain_grace": "1s"}
    config: dict[str, Any] = {
        **plaintext,
        "service": {**service, "name": "inventory"},
        "sidecar": {"descriptor_sets": [str(descriptors)]},
        "inbound": {"validate": True},
    }
    sidecar = start_sidecar(module_procs, folder, "inventory-v", config, app=f"127.0.0.1:{app_port}")
    reflecting = {**config, "service": {**service, "name": "inventory-learning"}, "sidecar": {}}
    learning = start_sidecar(module_procs, folder, "inventory-r", reflecting, app=f"127.0.0.1:{app_port}")
    return Servers(
        agent,
        f"127.0.0.1:{orders_port}",
        f"127.0.0.1:{sidecar.inbound_port}",
        f"127.0.0.1:{learning.inbound_port}",
        f"127.0.0.1:{app_port}",
    )


@pytest_asyncio.fixture
async def channels(servers: Servers) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """Plain grpcio channels, no meshlet on the caller's side."""
    names = ("orders", "sidecar", "learning", "app")
    opened = {name: grpc.aio.insecure_channel(getattr(servers, name)) for name in names}
    try:
        yield opened
    finally:
        for channel in opened.values():
            await channel.close()


def bad_request_of(error: grpc.aio.AioRpcError) -> tuple[list[tuple[str, str, str]], str]:
    """The BadRequest's (field, rule id, description) and the ErrorInfo's reason ("" without one)."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no grpc-status-details-bin in {error}"
    found: list[tuple[str, str, str]] = []
    reason = ""
    for packed in status.details:
        bad, info = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo()
        if packed.Unpack(bad):
            found += [(v.field, v.reason, v.description) for v in bad.field_violations]
        elif packed.Unpack(info):
            reason = info.reason
    return found, reason


async def test_an_sdk_server_refuses_an_invalid_request_for_a_plain_grpc_caller(channels) -> None:
    stub = orders_pb2_grpc.OrdersStub(channels["orders"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetOrder(orders_pb2.GetOrderRequest(order_id=""), timeout=WAIT_S)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    found, reason = bad_request_of(refused.value)
    assert found == [("order_id", "string.min_len", "must be at least 1 characters")]
    assert reason == "REQUEST_INVALID"

    with pytest.raises(grpc.aio.AioRpcError) as listed:
        await stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=101), timeout=WAIT_S)
    assert listed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [(f, r) for f, r, _ in bad_request_of(listed.value)[0]] == [("page_size", "int32.gte_lte")]


async def test_an_sdk_server_serves_a_valid_request_as_before(channels) -> None:
    stub = orders_pb2_grpc.OrdersStub(channels["orders"])
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetOrder(orders_pb2.GetOrderRequest(order_id="o-none"), timeout=WAIT_S)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND  # the servicer's own answer
    page = await stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=5), timeout=WAIT_S)
    assert list(page.orders) == []


async def test_an_app_behind_a_sidecar_gets_only_valid_requests(channels) -> None:
    request = inventory_pb2.ReserveRequest(reservation_id="r-v-2", sku="sku-tea", quantity=0)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await inventory_pb2_grpc.InventoryStub(channels["sidecar"]).Reserve(request, timeout=WAIT_S)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    found, reason = bad_request_of(refused.value)
    assert found == [("quantity", "int32.gt_lte", "must be greater than 0 and less than or equal to 1000")]
    assert reason == "REQUEST_INVALID"

    # The same request sent to the app itself: its own check, in its own words, without meshlet's ErrorInfo.
    with pytest.raises(grpc.aio.AioRpcError) as direct:
        await inventory_pb2_grpc.InventoryStub(channels["app"]).Reserve(request, timeout=WAIT_S)
    assert direct.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "is invalid: quantity" not in (direct.value.details() or "")

    stock = await inventory_pb2_grpc.InventoryStub(channels["sidecar"]).GetStock(
        inventory_pb2.GetStockRequest(sku="sku-tea"), timeout=WAIT_S
    )
    assert stock.sku == "sku-tea"


async def test_a_sidecar_validates_with_the_types_it_learnt_from_the_apps_reflection(channels) -> None:
    """No descriptor set: until the sidecar has asked the app's reflection service, Reserve is a method it does not
    know and passes unvalidated (the app answers in its own words); once learnt, the sidecar refuses it itself."""
    stub = inventory_pb2_grpc.InventoryStub(channels["learning"])
    request = inventory_pb2.ReserveRequest(reservation_id="r-v-3", sku="sku-tea", quantity=0)
    reasons: list[str] = []
    stop = asyncio.get_running_loop().time() + WAIT_S
    while "REQUEST_INVALID" not in reasons and asyncio.get_running_loop().time() < stop:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Reserve(request, timeout=WAIT_S)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # the app's answer, or the sidecar's
        status = rpc_status.from_call(refused.value)
        reasons.append(bad_request_of(refused.value)[1] if status is not None else "")
        await asyncio.sleep(0.1)
    assert reasons[-1] == "REQUEST_INVALID", f"the sidecar never validated Reserve: {reasons}"
    found, _ = bad_request_of(refused.value)
    assert [(field, rule) for field, rule, _ in found] == [("quantity", "int32.gt_lte")]
