"""The sample shop as an operator runs it, every part a real process on loopback:

    test client (SDK) -> gateway (SDK) -> orders (SDK) -> sidecar -> inventory x2 (plain grpcio)
                                                       -> sidecar -> payments (plain grpcio)

all with mTLS certificates from one dev CA, found through a dev agent. One inventory instance fails every call
with UNAVAILABLE from the start: the mesh in orders masks it, so every checkout still succeeds.

One setup for the module (the agent and seven processes), so each test makes only its calls.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

from meshlet.config import load_config
from meshlet.mesh import Mesh
from meshlet.security.dev_ca import init_ca, issue
from meshlet_shop.status import field_violations
from meshlet_shop_api.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshlet_shop_api.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshlet_shop_api.orders.v1 import orders_pb2, orders_pb2_grpc
from meshlet_shop_api.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Child, Processes, free_port, processes, wait_until
from tests.support.sidecars import START_S, start_sidecar, tls_files

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TRUST_DOMAIN = "meshlet.test"
WAIT_S = 10.0  # the deadline of each call: a bound, never a timing assertion


@dataclass
class Shop:
    agent: Agent
    pki: Path
    faulty_inventory: Child
    children: list[Child]

    def log_lines(self, *needles: str) -> str:
        """Every child's log lines that mention one of `needles`: what a failed assertion shows of what happened."""
        return "\n".join(
            f"{child.log_path.name}: {line}"
            for child in self.children
            for line in child.output().splitlines()
            if any(needle in line for needle in needles)
        )


def service_argv(name: str, port: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", f"meshlet_shop.{name}", "--port", str(port), *flags]


def start_plain(
    procs: Processes,
    name: str,
    instance: str,
    *flags: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Child, int]:
    """A plain shop app; returns once it logs ``listening on PORT``."""
    port = port or free_port()
    child = procs.start(service_argv(name, port, "--instance-id", instance, *flags), name=instance, env=env)
    wait_until(lambda: f"listening on {port}" in child.output() or not child.alive(), START_S, f"{instance} to serve")
    assert child.alive(), f"{instance} exited at start:\n{child.output()}"
    return child, port


def sdk_env(agent: Agent, pki: Path, service: str) -> dict[str, str]:
    cert = tls_files(pki, service)
    return {
        "CONSUL_HTTP_ADDR": agent.url,
        "MESHLET_SERVICE__NAME": service,
        "MESHLET_SERVICE__CHECK_TTL": "1s",
        "MESHLET_SERVICE__DRAIN_GRACE": "1s",
        "MESHLET_TLS__SOURCE": "files",
        "MESHLET_TLS__CERT": cert["cert"],
        "MESHLET_TLS__KEY": cert["key"],
        "MESHLET_TLS__CA": cert["ca"],
    }


def start_sdk(procs: Processes, agent: Agent, service: str, env: dict[str, str]) -> Child:
    """An SDK-mode shop service; returns once it is registered in `agent` and passing its check."""
    port = free_port()
    child = procs.start(service_argv(service, port), name=service, env=env)

    def registered() -> bool:
        return not child.alive() or port in {int(e["Service"]["Port"]) for e in agent.passing(service)}

    wait_until(registered, START_S, f"{service} to register and pass its check")
    assert child.alive(), f"{service} exited at start:\n{child.output()}"
    return child


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


@pytest.fixture(scope="module")
def shop(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Shop:
    folder = tmp_path_factory.mktemp("shop")
    pki = folder / "certs"
    init_ca(pki, TRUST_DOMAIN)
    for service in ("gateway", "orders", "inventory", "payments", "shop-client"):
        issue(pki, service)
    agent = start_dev_agent(module_procs)

    def behind_sidecar(service: str, instance: str, *flags: str) -> Child:
        env = {"CONSUL_HTTP_ADDR": agent.url} if service == "payments" else None  # its ledger in Consul KV
        child, port = start_plain(module_procs, service, instance, *flags, env=env)
        config = {
            "service": {"name": service, "check_ttl": "1s", "drain_grace": "1s"},
            "consul": {"address": agent.url},
            "tls": tls_files(pki, service),
        }
        start_sidecar(module_procs, folder, instance, config, app=f"127.0.0.1:{port}")
        return child

    behind_sidecar("inventory", "inventory-1")
    faulty = behind_sidecar("inventory", "inventory-2", "--error-rate", "1.0", "--error-code", "UNAVAILABLE")
    behind_sidecar("payments", "payments-1")
    for service in ("orders", "gateway"):
        start_sdk(module_procs, agent, service, sdk_env(agent, pki, service))
    return Shop(agent, pki, faulty, module_procs.children)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(shop: Shop) -> AsyncIterator[Mesh]:
    """The test's own SDK mesh, with a certificate of the shop's CA."""
    config = load_config(
        None, env={"CONSUL_HTTP_ADDR": shop.agent.url}, overrides={"tls": tls_files(shop.pki, "shop-client")}
    )
    mesh = Mesh(config)
    await mesh.start()
    yield mesh
    await mesh.close()


@pytest_asyncio.fixture(loop_scope="module")
async def gateway(client: Mesh) -> gateway_pb2_grpc.GatewayStub:
    return gateway_pb2_grpc.GatewayStub(client.channel("gateway"))


@pytest_asyncio.fixture(loop_scope="module")
async def orders(client: Mesh) -> orders_pb2_grpc.OrdersStub:
    return orders_pb2_grpc.OrdersStub(client.channel("orders"))


def checkout(
    customer: str = "c-1", sku: str = "sku-tea", quantity: int = 1, request_id: str = ""
) -> gateway_pb2.CheckoutRequest:
    return gateway_pb2.CheckoutRequest(
        request_id=request_id or str(uuid.uuid4()), customer_id=customer, sku=sku, quantity=quantity
    )


def error_reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert any(box.Unpack(info) for box in status.details if box.Is(info.DESCRIPTOR))
    return str(info.reason)


# ------------------------------------------------------------------------------------------ checkout


async def test_checkout_creates_a_paid_order_once_per_request_id(
    gateway: gateway_pb2_grpc.GatewayStub, orders: orders_pb2_grpc.OrdersStub
) -> None:
    request = checkout(quantity=2)
    reply = await gateway.Checkout(request, timeout=WAIT_S)
    assert reply.order_id.startswith("ord-")
    assert reply.charge_id
    again = await gateway.Checkout(request, timeout=WAIT_S)  # a client's retry of the same checkout
    assert (again.order_id, again.charge_id) == (reply.order_id, reply.charge_id)
    order = await orders.GetOrder(orders_pb2.GetOrderRequest(order_id=reply.order_id), timeout=WAIT_S)
    assert (order.state, order.charge_id, order.customer_id) == ("PAID", reply.charge_id, "c-1")
    assert [(item.sku, item.quantity) for item in order.items] == [("sku-tea", 2)]


async def test_one_failing_inventory_instance_is_masked_by_the_mesh(
    gateway: gateway_pb2_grpc.GatewayStub, shop: Shop
) -> None:
    replies = [await gateway.Checkout(checkout(customer="c-masked"), timeout=WAIT_S) for _ in range(20)]
    assert all(reply.charge_id for reply in replies)
    assert "injected UNAVAILABLE on Reserve" in shop.faulty_inventory.output()  # it did fail calls


async def test_bad_checkout_gets_field_violations_the_client_can_read(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    bad = gateway_pb2.CheckoutRequest(request_id="", customer_id="c-1", sku="sku-unicorn", quantity=0)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await gateway.Checkout(bad, timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = dict(field_violations(rpc_status.from_call(failed.value)))
    assert set(violations) == {"request_id", "sku", "quantity"}
    assert "sku-tea" in violations["sku"]  # it says which skus exist


async def test_out_of_stock_is_a_failed_precondition(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await gateway.Checkout(checkout(sku="sku-teapot", quantity=1000), timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(failed.value) == "OUT_OF_STOCK"


async def kettles(client: Mesh) -> int:
    inventory = inventory_pb2_grpc.InventoryStub(client.channel("inventory"))
    stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="sku-kettle"), timeout=WAIT_S)
    return int(stock.available)


async def test_an_order_failing_on_a_later_item_gives_back_what_it_reserved(
    orders: orders_pb2_grpc.OrdersStub, client: Mesh, shop: Shop
) -> None:
    """The kettle is reserved, then the teapots are out of stock: the kettle goes back on the shelf."""
    request_id = str(uuid.uuid4())
    before = await kettles(client)
    create = orders_pb2.CreateOrderRequest(
        request_id=request_id,
        customer_id="c-release",
        items=[orders_pb2.LineItem(sku="sku-kettle", quantity=2), orders_pb2.LineItem(sku="sku-teapot", quantity=999)],
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await orders.CreateOrder(create, timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await kettles(client) == before, shop.log_lines(request_id, '"level": "warning"')


async def test_an_order_whose_charge_is_refused_gives_back_what_it_reserved(
    orders: orders_pb2_grpc.OrdersStub, client: Mesh, shop: Shop
) -> None:
    """payments refuses the charge (its key was used for another payment): the reservation goes back."""
    request_id = str(uuid.uuid4())
    payments = payments_pb2_grpc.PaymentsStub(client.channel("payments"))
    taken = payments_pb2.ChargeRequest(idempotency_key=request_id, order_id="ord-other", amount_cents=1, currency="EUR")
    await payments.Charge(taken, timeout=WAIT_S)
    before = await kettles(client)
    create = orders_pb2.CreateOrderRequest(
        request_id=request_id, customer_id="c-release", items=[orders_pb2.LineItem(sku="sku-kettle", quantity=1)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await orders.CreateOrder(create, timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await kettles(client) == before, shop.log_lines(request_id, '"level": "warning"')


# ------------------------------------------------------------------------------------------ payments


async def test_a_retried_charge_is_charged_once(client: Mesh) -> None:
    payments = payments_pb2_grpc.PaymentsStub(client.channel("payments"))
    key = str(uuid.uuid4())
    charge = payments_pb2.ChargeRequest(idempotency_key=key, order_id="ord-x", amount_cents=1200, currency="EUR")
    first = await payments.Charge(charge, timeout=WAIT_S)
    second = await payments.Charge(charge, timeout=WAIT_S)
    assert (first.replayed, second.replayed) == (False, True)
    assert second.charge_id == first.charge_id
    other = payments_pb2.ChargeRequest(idempotency_key=key, order_id="ord-x", amount_cents=99, currency="EUR")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await payments.Charge(other, timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(failed.value) == "IDEMPOTENCY_KEY_REUSED"


async def test_a_charge_resent_to_another_payments_instance_is_charged_once(procs: Processes, agent: Agent) -> None:
    """Two payments instances beside one agent share their idempotency records in its KV: the mesh may re-send a
    charge to the other instance, which answers with the first charge (replayed) instead of charging again."""
    env = {"CONSUL_HTTP_ADDR": agent.url}
    ports = [start_plain(procs, "payments", f"payments-kv-{n}", env=env)[1] for n in (1, 2)]
    key = f"../{uuid.uuid4()}/..?cas=1&x=/"  # any key a client sends must make one safe KV key
    charge = payments_pb2.ChargeRequest(idempotency_key=key, order_id="ord-kv", amount_cents=700, currency="EUR")
    replies = []
    for port in ports:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            replies.append(await payments_pb2_grpc.PaymentsStub(channel).Charge(charge, timeout=WAIT_S))
    assert [reply.replayed for reply in replies] == [False, True]
    assert replies[0].charge_id == replies[1].charge_id
    other = payments_pb2.ChargeRequest(idempotency_key=key, order_id="ord-kv", amount_cents=1, currency="EUR")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await payments_pb2_grpc.PaymentsStub(channel).Charge(other, timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(failed.value) == "IDEMPOTENCY_KEY_REUSED"
    stored = agent.get("/v1/kv/shop/payments/charges?keys")
    assert len(stored) == 1
    assert stored[0].removeprefix("shop/payments/charges/").isalnum()


# ------------------------------------------------------------------------------------------ listing


async def test_list_orders_pages_through_every_order_once(orders: orders_pb2_grpc.OrdersStub) -> None:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    made = []
    for _ in range(7):
        create = orders_pb2.CreateOrderRequest(
            request_id=str(uuid.uuid4()), customer_id=customer, items=[orders_pb2.LineItem(sku="sku-mug", quantity=1)]
        )
        made.append((await orders.CreateOrder(create, timeout=WAIT_S)).order_id)
    listed: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        page = await orders.ListOrders(
            orders_pb2.ListOrdersRequest(page_size=3, page_token=token, filter=f"customer_id={customer}"),
            timeout=WAIT_S,
        )
        listed += [order.order_id for order in page.orders]
        sizes.append(len(page.orders))
        token = page.next_page_token
        if not token:
            break
    assert listed == made
    assert sizes == [3, 3, 1]


@pytest.mark.parametrize(
    ("tamper", "field"),
    [
        (lambda token, customer: (token[:-2] + "AA", f"customer_id={customer}"), "page_token"),
        (lambda token, customer: (token, "state=PAID"), "page_token"),  # a token of another filter
        (lambda token, customer: ("", "colour=red"), "filter"),
    ],
    ids=["tampered-token", "token-of-another-filter", "unknown-filter-field"],
)
async def test_list_orders_refuses_bad_tokens_and_filters(orders: orders_pb2_grpc.OrdersStub, tamper, field) -> None:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        create = orders_pb2.CreateOrderRequest(
            request_id=str(uuid.uuid4()), customer_id=customer, items=[orders_pb2.LineItem(sku="sku-tea", quantity=1)]
        )
        await orders.CreateOrder(create, timeout=WAIT_S)
    first = await orders.ListOrders(
        orders_pb2.ListOrdersRequest(page_size=1, filter=f"customer_id={customer}"), timeout=WAIT_S
    )
    token, filter_text = tamper(first.next_page_token, customer)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await orders.ListOrders(orders_pb2.ListOrdersRequest(page_token=token, filter=filter_text), timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = dict(field_violations(rpc_status.from_call(failed.value)))
    assert list(violations) == [field]
    if field == "filter":
        assert "customer_id, state" in violations["filter"]  # names the fields one may filter on


# ------------------------------------------------------------------------------------------ one plain app


async def test_faults_file_changes_a_running_instance_and_sigterm_stops_it(procs: Processes, tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"error_rate": 1.0, "error_code": "RESOURCE_EXHAUSTED"}))
    child, port = start_plain(procs, "inventory", "inventory-solo", "--faults-file", str(faults))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        inventory = inventory_pb2_grpc.InventoryStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await inventory.GetStock(inventory_pb2.GetStockRequest(sku="sku-tea"), timeout=WAIT_S)
        assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "injected" in (failed.value.details() or "")

        faults.write_text(json.dumps({"error_rate": 0}))
        wait_until(lambda: '"faults now error_rate=0' in child.output(), WAIT_S, "the new faults to be read")
        stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="sku-tea"), timeout=WAIT_S)
        assert stock.available > 0

        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(f"127.0.0.1:{port}") as sync_channel:
        assert "shop.inventory.v1.Inventory" in ProtoReflectionDescriptorDatabase(sync_channel).get_services()
    child.signal(signal.SIGTERM)
    assert child.wait(WAIT_S) == 0


async def test_sdk_service_with_a_bad_meshlet_config_exits_2(procs: Processes) -> None:
    env = {"MESHLET_TLS__SOURCE": "sometimes", "CONSUL_HTTP_ADDR": "http://127.0.0.1:1"}
    child = procs.start(service_argv("orders", free_port()), name="orders-bad", env=env)
    assert child.wait(START_S) == 2
    assert "tls.source" in child.output()
    assert "Traceback" not in child.output()


async def test_without_inventory_a_checkout_is_aborted_naming_it_and_sigterm_stops_cleanly(
    procs: Processes, agent: Agent
) -> None:
    """No inventory at all: orders does not pass the mesh's UNAVAILABLE on as its own (the gateway would retry it
    and count it against a healthy orders instance); the mesh's server answers for it ABORTED, saying which
    upstream failed and why (UPSTREAM_FAILED), and the gateway passes that on."""
    env = {"CONSUL_HTTP_ADDR": agent.url, "MESHLET_SERVICE__CHECK_TTL": "1s", "MESHLET_SERVICE__DRAIN_GRACE": "1s"}
    started = [start_sdk(procs, agent, service, env) for service in ("orders", "gateway")]
    async with Mesh(load_config(None, env={"CONSUL_HTTP_ADDR": agent.url})) as mesh:
        gateway = gateway_pb2_grpc.GatewayStub(mesh.channel("gateway"))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await gateway.Checkout(checkout(), timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.ABORTED
    assert "inventory" in (failed.value.details() or "")
    status = rpc_status.from_call(failed.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.metadata["upstream"], info.metadata["upstream_reason"]) == (
        "UPSTREAM_FAILED",
        "inventory",
        "NO_HEALTHY_ENDPOINT",
    )
    for child in started:
        child.signal(signal.SIGTERM)
        assert child.wait(WAIT_S) == 0, child.output()
    assert agent.passing("gateway") == agent.passing("orders") == []


async def test_sdk_service_with_missing_certificate_files_exits_2_at_once(procs: Processes, tmp_path: Path) -> None:
    """Files that are not there will not appear by waiting: one line naming the field, exit 2, no retry loop."""
    missing = str(tmp_path / "absent.pem")
    env = {
        "CONSUL_HTTP_ADDR": "http://127.0.0.1:1",
        "MESHLET_TLS__SOURCE": "files",
        "MESHLET_TLS__CERT": missing,
        "MESHLET_TLS__KEY": missing,
        "MESHLET_TLS__CA": missing,
    }
    child = procs.start(service_argv("orders", free_port()), name="orders-no-certs", env=env)
    assert child.wait(START_S) == 2, child.output()
    assert "tls.cert" in child.output()
    assert "Traceback" not in child.output()


async def test_sdk_service_with_another_services_certificate_exits_2_naming_both(
    procs: Processes, tmp_path: Path
) -> None:
    """wrongsvc serving client.crt would answer as that client to every caller: one line and exit 2, at start."""
    init_ca(tmp_path, TRUST_DOMAIN)
    issue(tmp_path, "client")
    cert = tls_files(tmp_path, "client")
    env = {
        "CONSUL_HTTP_ADDR": "http://127.0.0.1:1",
        "MESHLET_SERVICE__NAME": "wrongsvc",
        **{f"MESHLET_TLS__{key.upper()}": value for key, value in cert.items()},
    }
    child = procs.start(service_argv("orders", free_port()), name="wrongsvc", env=env)
    assert child.wait(START_S) == 2, child.output()
    output = child.output()
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "tls.cert" in line]
    assert "holds the certificate of service 'client'" in line
    assert "not of service.name 'wrongsvc'" in line
    assert "meshlet certs issue <ca folder> wrongsvc" in line


async def test_sdk_service_waiting_for_the_connect_ca_stops_cleanly_on_sigterm(procs: Processes) -> None:
    """No agent answers yet (a pod starting beside its node agent): the service waits; SIGTERM ends it with 0."""
    env = {"CONSUL_HTTP_ADDR": f"http://127.0.0.1:{free_port()}", "MESHLET_TLS__SOURCE": "consul"}
    child = procs.start(service_argv("orders", free_port()), name="orders-waiting", env=env)
    wait_until(lambda: "loading certificates" in child.output() or not child.alive(), START_S, "the certificate wait")
    assert child.alive(), child.output()
    child.signal(signal.SIGTERM)
    assert child.wait(WAIT_S) == 0, child.output()
    assert "stopped while waiting for certificates" in child.output()


async def test_sdk_service_on_a_taken_port_exits_1_with_one_line(procs: Processes, agent: Agent) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        child = procs.start(service_argv("orders", port), name="orders-taken", env={"CONSUL_HTTP_ADDR": agent.url})
        assert child.wait(START_S) == 1, child.output()
    assert f"cannot serve orders on 127.0.0.1:{port} (Address already in use" in child.output()
    assert "Traceback" not in child.output()
