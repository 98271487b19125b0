"""The Inventory v2 gRPC API (shop.inventory.v2): resource names, availability in words and a list call, over the
same stock as v1 and by v1's rules: each call is translated to v1's and back, so the checks, faults and statuses
live in one place (meshlet_shop.inventory.servicer)."""

from __future__ import annotations

import datetime
from typing import Any

from meshlet_shop.catalog import PRODUCTS
from meshlet_shop.inventory.servicer import Inventory as InventoryV1
from meshlet_shop.status import abort, bad_request
from meshlet_shop_api.inventory.v1 import inventory_pb2 as v1
from meshlet_shop_api.inventory.v2 import inventory_pb2 as v2
from meshlet_shop_api.inventory.v2 import inventory_pb2_grpc

ITEMS = "inventory/items/"
LOW_BELOW = 10  # units: under this an item is LOW


def item_name(sku: str) -> str:
    return ITEMS + sku


def availability(units: int) -> v2.Availability:
    if units <= 0:
        return v2.OUT_OF_STOCK
    return v2.LOW if units < LOW_BELOW else v2.IN_STOCK


async def _sku_of(name: str, context: Any) -> str:
    if not name.startswith(ITEMS) or "/" in name[len(ITEMS) :] or name == ITEMS:
        example = item_name(min(PRODUCTS))
        await abort(context, bad_request("invalid item name", [("name", f"must be {ITEMS}{{sku}}, e.g. {example}")]))
    return name[len(ITEMS) :]


class Inventory(inventory_pb2_grpc.InventoryServicer):
    def __init__(self, v1_servicer: InventoryV1) -> None:
        self.v1 = v1_servicer

    async def _item(self, sku: str, context: Any) -> v2.Item:
        stock = await self.v1.GetStock(v1.GetStockRequest(sku=sku), context)
        item = v2.Item(
            name=item_name(sku),
            sku=sku,
            title=PRODUCTS[sku].name,
            available=stock.available,
            availability=availability(stock.available),
            price_cents=PRODUCTS[sku].price_cents,
        )
        item.read_time.FromDatetime(datetime.datetime.now(datetime.UTC))
        return item

    async def GetItem(self, request: v2.GetItemRequest, context: Any) -> v2.Item:  # noqa: N802
        return await self._item(await _sku_of(request.name, context), context)

    async def ListItems(self, request: v2.ListItemsRequest, context: Any) -> v2.ListItemsResponse:  # noqa: N802
        wanted = set(request.filter.availability)
        items = [await self._item(sku, context) for sku in (request.skus or sorted(PRODUCTS))]
        return v2.ListItemsResponse(items=[item for item in items if not wanted or item.availability in wanted])

    async def ReserveItem(self, request: v2.ReserveItemRequest, context: Any) -> v2.Reservation:  # noqa: N802
        sku = await _sku_of(request.name, context)
        asked = v1.ReserveRequest(reservation_id=request.reservation_id, sku=sku, quantity=request.quantity)
        made = await self.v1.Reserve(asked, context)
        return v2.Reservation(
            reservation_id=made.reservation_id,
            item=request.name,
            quantity=request.quantity,
            remaining=made.remaining,
            served_by=made.served_by,
        )

    async def ReleaseReservation(  # noqa: N802
        self, request: v2.ReleaseReservationRequest, context: Any
    ) -> v2.ReleaseReservationResponse:
        released = await self.v1.Release(v1.ReleaseRequest(reservation_id=request.reservation_id), context)
        return v2.ReleaseReservationResponse(
            reservation_id=released.reservation_id, released=released.released, served_by=released.served_by
        )
