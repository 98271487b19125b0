"""Two replicas of orders and of inventory on one real redis-server (SHOP_STORE=redis://...) act as one service:
stock is never oversold whichever replica reserves, a reservation is made once and released once across them,
an order made on one replica is read, replayed and paged through on the other. Real gRPC servers on loopback
(the shop's own servicers), each replica with its own Redis client, as separate pods would have.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio

from meshlet_shop.catalog import PRODUCTS
from meshlet_shop.faults import FaultInjector, Faults
from meshlet_shop.inventory.redis_stock import RedisStock
from meshlet_shop.inventory.servicer import Inventory
from meshlet_shop.orders.redis_store import RedisOrders
from meshlet_shop.orders.servicer import Orders
from meshlet_shop.payments.consul_ledger import MemoryBook
from meshlet_shop.payments.idempotency import Ledger
from meshlet_shop.payments.servicer import Payments
from meshlet_shop_api.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshlet_shop_api.orders.v1 import orders_pb2, orders_pb2_grpc
from meshlet_shop_api.payments.v1 import payments_pb2_grpc
from tests.support.processes import Processes, free_port
from tests.support.redis_server import RedisServer, start_redis

NO_FAULTS = Faults()
CALL_S = 10.0
RACERS = 12  # reserves of one unit each of the last units, half on each replica


@pytest.fixture
def redis(procs: Processes) -> RedisServer:
    return start_redis(procs)


async def serve(stack: AsyncExitStack, register: Callable[[Any, grpc.aio.Server], None], servicer: Any) -> str:
    server = grpc.aio.server()
    register(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stack.push_async_callback(server.stop, None)
    return f"127.0.0.1:{port}"


async def channel(stack: AsyncExitStack, address: str) -> grpc.aio.Channel:
    opened = grpc.aio.insecure_channel(address)
    stack.push_async_callback(opened.close)
    return opened


@dataclass
class Shop:
    inventories: list[inventory_pb2_grpc.InventoryStub]
    orders: list[orders_pb2_grpc.OrdersStub]
    stocks: list[RedisStock]


@pytest_asyncio.fixture
async def shop(redis: RedisServer) -> AsyncIterator[Shop]:
    """Two inventory replicas and two orders replicas on one Redis (their own client each), one payments."""
    async with AsyncExitStack() as stack:
        stocks, inventories, inventory_addresses = [], [], []
        for n in (1, 2):
            stock = RedisStock.from_url(redis.url)
            stack.push_async_callback(stock.close)
            await stock.seed({sku: product.initial_stock for sku, product in PRODUCTS.items()})
            servicer = Inventory(stock, FaultInjector(NO_FAULTS, instance=f"inventory-{n}"), f"inventory-{n}")
            address = await serve(stack, inventory_pb2_grpc.add_InventoryServicer_to_server, servicer)
            stocks.append(stock)
            inventory_addresses.append(address)
            inventories.append(inventory_pb2_grpc.InventoryStub(await channel(stack, address)))
        payments = Payments(MemoryBook(Ledger()), FaultInjector(NO_FAULTS, instance="payments-1"))
        payments_address = await serve(stack, payments_pb2_grpc.add_PaymentsServicer_to_server, payments)
        orders = []
        for n in (1, 2):
            store = RedisOrders.from_url(redis.url)
            stack.push_async_callback(store.close)
            upstreams = {"inventory": inventory_addresses[n - 1], "payments": payments_address}
            channels = {name: await channel(stack, address) for name, address in upstreams.items()}
            replica = Orders(channels.__getitem__, FaultInjector(NO_FAULTS, instance=f"orders-{n}"), store=store)
            address = await serve(stack, orders_pb2_grpc.add_OrdersServicer_to_server, replica)
            orders.append(orders_pb2_grpc.OrdersStub(await channel(stack, address)))
        yield Shop(inventories, orders, stocks)


async def test_two_inventory_replicas_never_oversell_the_last_units(shop: Shop) -> None:
    sku = "sku-teapot"  # the scarce one
    last = (await shop.inventories[0].GetStock(inventory_pb2.GetStockRequest(sku=sku), timeout=CALL_S)).available
    assert 0 < last < RACERS

    async def reserve_one(n: int) -> grpc.StatusCode:
        request = inventory_pb2.ReserveRequest(reservation_id=f"race-{n}", sku=sku, quantity=1)
        try:
            await shop.inventories[n % 2].Reserve(request, timeout=CALL_S)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(reserve_one(n) for n in range(RACERS)))

    assert sorted(code.name for code in codes) == ["FAILED_PRECONDITION"] * (RACERS - last) + ["OK"] * last
    for inventory in shop.inventories:  # both replicas see the one stock
        stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku=sku), timeout=CALL_S)
        assert stock.available == 0


async def test_a_reservation_is_made_and_released_once_across_replicas(shop: Shop) -> None:
    sku = "sku-kettle"
    before = (await shop.inventories[0].GetStock(inventory_pb2.GetStockRequest(sku=sku), timeout=CALL_S)).available
    reserve = inventory_pb2.ReserveRequest(reservation_id=str(uuid.uuid4()), sku=sku, quantity=2)

    first = await shop.inventories[0].Reserve(reserve, timeout=CALL_S)
    again = await shop.inventories[1].Reserve(reserve, timeout=CALL_S)  # a retry the mesh sent to the other

    assert (first.served_by, again.served_by) == ("inventory-1", "inventory-2")
    assert first.remaining == again.remaining == before - 2
    stock = await shop.inventories[1].GetStock(inventory_pb2.GetStockRequest(sku=sku), timeout=CALL_S)
    assert stock.available == before - 2
    other = inventory_pb2.ReserveRequest(reservation_id=reserve.reservation_id, sku=sku, quantity=3)
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await shop.inventories[1].Reserve(other, timeout=CALL_S)
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS

    release = inventory_pb2.ReleaseRequest(reservation_id=reserve.reservation_id)
    released = await asyncio.gather(*(inventory.Release(release, timeout=CALL_S) for inventory in shop.inventories))

    assert sorted(reply.released for reply in released) == [False, True]
    stock = await shop.inventories[0].GetStock(inventory_pb2.GetStockRequest(sku=sku), timeout=CALL_S)
    assert stock.available == before


def order_request(customer: str = "c-1") -> orders_pb2.CreateOrderRequest:
    return orders_pb2.CreateOrderRequest(
        request_id=str(uuid.uuid4()), customer_id=customer, items=[orders_pb2.LineItem(sku="sku-tea", quantity=1)]
    )


async def test_an_order_made_on_one_replica_is_read_and_replayed_on_the_other(shop: Shop) -> None:
    request = order_request()
    made = await shop.orders[0].CreateOrder(request, timeout=CALL_S)

    found = await shop.orders[1].GetOrder(orders_pb2.GetOrderRequest(order_id=made.order_id), timeout=CALL_S)
    replayed = await shop.orders[1].CreateOrder(request, timeout=CALL_S)  # a retry routed to the other replica

    assert found == replayed == made
    tea = await shop.inventories[0].GetStock(inventory_pb2.GetStockRequest(sku="sku-tea"), timeout=CALL_S)
    assert tea.available == PRODUCTS["sku-tea"].initial_stock - 1  # reserved once


async def test_list_orders_pages_across_replicas(shop: Shop) -> None:
    made = [await shop.orders[n % 2].CreateOrder(order_request(f"c-{n % 2}"), timeout=CALL_S) for n in range(5)]

    seen: list[str] = []
    token = ""
    for n in range(10):  # each page from the other replica, with the token the previous one issued
        page = await shop.orders[n % 2].ListOrders(
            orders_pb2.ListOrdersRequest(page_size=2, page_token=token), timeout=CALL_S
        )
        seen += [order.order_id for order in page.orders]
        token = page.next_page_token
        if not token:
            break

    assert seen == [order.order_id for order in made]
    filtered = await shop.orders[1].ListOrders(
        orders_pb2.ListOrdersRequest(filter='customer_id = "c-1"', page_size=1), timeout=CALL_S
    )
    rest = await shop.orders[0].ListOrders(
        orders_pb2.ListOrdersRequest(filter='customer_id = "c-1"', page_token=filtered.next_page_token),
        timeout=CALL_S,
    )
    assert [o.order_id for o in (*filtered.orders, *rest.orders)] == [made[1].order_id, made[3].order_id]
    assert not rest.next_page_token


async def test_a_store_that_does_not_answer_makes_calls_unavailable_not_a_crash() -> None:
    stock = RedisStock.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    async with AsyncExitStack() as stack:
        stack.push_async_callback(stock.close)
        servicer = Inventory(stock, FaultInjector(NO_FAULTS, instance="inventory-1"), "inventory-1")
        address = await serve(stack, inventory_pb2_grpc.add_InventoryServicer_to_server, servicer)
        inventory = inventory_pb2_grpc.InventoryStub(await channel(stack, address))
        reserve = inventory_pb2.ReserveRequest(reservation_id="r1", sku="sku-tea", quantity=1)

        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await inventory.Reserve(reserve, timeout=CALL_S)

        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "did not answer" in (failed.value.details() or "")
        assert "same reservation_id" in (failed.value.details() or "")


async def test_redis_keeps_the_in_process_bounds(redis: RedisServer) -> None:
    """meshlet_shop.bounded's bounds hold in Redis too: reservation records by count and by age (stock is not given
    back for a forgotten one), orders by count, paging on past the forgotten ones."""
    now = [1_000_000.0]
    stock = RedisStock.from_url(redis.url, max_records=5, max_age_s=60.0, clock=lambda: now[0])
    store = RedisOrders.from_url(redis.url, max_orders=3)
    try:
        await stock.seed({"tea": 100})
        for n in range(20):
            await stock.reserve(f"r{n}", "tea", 1)
        assert await stock.client.hlen("shop:{inventory}:reservations") == 5
        assert await stock.level("tea") == 80
        assert (await stock.reserve("r19", "tea", 1))[1] is True  # held: a replay
        now[0] += 61.0  # past the age bound: forgotten, so the same id reserves anew
        assert (await stock.reserve("r19", "tea", 1))[1] is False
        assert await stock.release("r18") is None
        assert await stock.level("tea") == 79

        for n in range(5):
            await store.add(f"req-{n}", orders_pb2.Order(order_id=f"ord-{n}", customer_id="c"))
        assert await store.get("ord-1") is None
        assert await store.for_request("req-1") is None
        assert await store.for_request("req-2") == orders_pb2.Order(order_id="ord-2", customer_id="c")
        orders, cursor = await store.page(0, 2, lambda order: True)
        assert [order.order_id for order in orders] == ["ord-2", "ord-3"]
        assert cursor is not None
        assert [order.order_id for order in (await store.page(cursor, 2, lambda order: True))[0]] == ["ord-4"]
    finally:
        await stock.close()
        await store.close()
