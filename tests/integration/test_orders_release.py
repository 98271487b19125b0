"""An order that is not made gives its reservations back *before* its caller hears so.

grpc.aio's ``context.abort`` sends the status at once; a release that ran after it would let a caller read the
stock, or retry the same request_id and have its replayed reservation released under it, in between. Real
gRPC servers on loopback: the real Orders and Inventory servicers, Inventory's Release made slow so that an
answer sent before the release finishes would be seen holding the stock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from meshlet_shop.catalog import PRODUCTS
from meshlet_shop.faults import FaultInjector, Faults
from meshlet_shop.inventory.servicer import Inventory
from meshlet_shop.inventory.stock import InProcessStock, Stock
from meshlet_shop.orders.servicer import Orders
from meshlet_shop_api.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshlet_shop_api.orders.v1 import orders_pb2, orders_pb2_grpc

RELEASE_DELAY_S = 0.3  # long beside a loopback round trip: an early answer would be read before the release
NO_FAULTS = Faults()


class SlowRelease(Inventory):
    async def Release(self, request: inventory_pb2.ReleaseRequest, context: Any) -> inventory_pb2.ReleaseReply:  # noqa: N802
        await asyncio.sleep(RELEASE_DELAY_S)
        return await super().Release(request, context)


async def serve(register: Any, servicer: Any) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    register(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest_asyncio.fixture
async def shop() -> AsyncIterator[tuple[orders_pb2_grpc.OrdersStub, Stock]]:
    stock = Stock.seeded({sku: product.initial_stock for sku, product in PRODUCTS.items()})
    inventory = SlowRelease(InProcessStock(stock), FaultInjector(NO_FAULTS, instance="inventory-1"), "inventory-1")
    inventory_server, inventory_address = await serve(inventory_pb2_grpc.add_InventoryServicer_to_server, inventory)
    # payments is never reached by these orders: its channel points at a port nothing listens on
    targets = {"inventory": inventory_address, "payments": "127.0.0.1:9"}
    channels = {name: grpc.aio.insecure_channel(address) for name, address in targets.items()}
    orders = Orders(channels.__getitem__, FaultInjector(NO_FAULTS, instance="orders-1"))
    orders_server, orders_address = await serve(orders_pb2_grpc.add_OrdersServicer_to_server, orders)
    client = grpc.aio.insecure_channel(orders_address)
    try:
        yield orders_pb2_grpc.OrdersStub(client), stock
    finally:
        await client.close()
        await orders_server.stop(None)
        for channel in channels.values():
            await channel.close()
        await inventory_server.stop(None)


async def test_an_out_of_stock_order_answers_only_once_its_reservations_are_back(
    shop: tuple[orders_pb2_grpc.OrdersStub, Stock],
) -> None:
    orders, stock = shop
    before = stock.level("sku-kettle")
    create = orders_pb2.CreateOrderRequest(
        request_id=str(uuid.uuid4()),
        customer_id="c-1",
        items=[orders_pb2.LineItem(sku="sku-kettle", quantity=2), orders_pb2.LineItem(sku="sku-teapot", quantity=999)],
    )

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await orders.CreateOrder(create, timeout=10)

    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stock.level("sku-kettle") == before  # read the moment the answer arrived
