"""Checkout: one order of one sku, through orders. The gateway is a facade: orders' answers reach the client as
orders gave them (code, message and details, such as BadRequest field violations); a failure of orders itself
is left to the mesh (meshlet_shop.status.LEFT_TO_THE_MESH), whose server answers it as UPSTREAM_FAILED."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from meshlet_shop.faults import FaultInjector
from meshlet_shop.status import LEFT_TO_THE_MESH, abort, with_info
from meshlet_shop_api.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshlet_shop_api.orders.v1 import orders_pb2, orders_pb2_grpc

_FIELDS = {"items[0].sku": "sku", "items[0].quantity": "quantity", "items": "sku"}  # CreateOrder's -> Checkout's


class Gateway(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, channel: Callable[[str], grpc.aio.Channel], faults: FaultInjector) -> None:
        self.orders = orders_pb2_grpc.OrdersStub(channel("orders"))
        self.faults = faults

    async def Checkout(  # noqa: N802
        self, request: gateway_pb2.CheckoutRequest, context: Any
    ) -> gateway_pb2.CheckoutReply:
        await self.faults.apply(context, "Checkout")
        create = orders_pb2.CreateOrderRequest(
            request_id=request.request_id,
            customer_id=request.customer_id,
            items=[orders_pb2.LineItem(sku=request.sku, quantity=request.quantity)],
        )
        try:
            order = await self.orders.CreateOrder(create)
        except grpc.aio.AioRpcError as error:
            if error.code() in LEFT_TO_THE_MESH:
                raise
            await abort(context, _answer(error))
        return gateway_pb2.CheckoutReply(order_id=order.order_id, charge_id=order.charge_id)


def _answer(error: grpc.aio.AioRpcError) -> grpc.Status:
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    if status is not None:  # orders' own answer with its details, its field names turned into ours
        return rpc_status.to_status(_our_fields(status))
    return with_info(error.code(), error.details() or "", "ORDERS_ANSWER", {"upstream": "orders"})


def _our_fields(status: status_pb2.Status) -> status_pb2.Status:
    """`status` with BadRequest field paths of CreateOrder renamed to Checkout's (items[0].sku -> sku)."""
    for box in status.details:
        if box.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            detail = error_details_pb2.BadRequest()
            box.Unpack(detail)
            for violation in detail.field_violations:
                violation.field = _FIELDS.get(violation.field, violation.field)
            box.Pack(detail)
    return status
