"""The Inventory gRPC API over a `StockStorage`: input checks, faults, and statuses that say what to do."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from meshlet_shop.catalog import PRODUCTS
from meshlet_shop.faults import FaultInjector
from meshlet_shop.inventory.stock import NotEnoughStock, ReservationConflict, StockStorage, UnknownSku
from meshlet_shop.shared_store import StoreUnavailable
from meshlet_shop.status import Violation, abort, bad_request, with_info
from meshlet_shop_api.inventory.v1 import inventory_pb2, inventory_pb2_grpc

log = logging.getLogger("meshlet_shop.inventory")
MAX_QUANTITY = 1000


def _unknown_sku(sku: str) -> grpc.Status:
    known = ", ".join(sorted(PRODUCTS))
    return with_info(
        grpc.StatusCode.NOT_FOUND,
        f"no sku {sku!r} in stock: known skus are {known} (GetStock tells the level of each)",
        "UNKNOWN_SKU",
        {"sku": sku},
    )


def _store_unavailable(error: StoreUnavailable) -> grpc.Status:
    return with_info(
        grpc.StatusCode.UNAVAILABLE,
        f"{error}: repeat the call (with the same reservation_id for Reserve) once the store is back",
        "STORE_UNAVAILABLE",
        {"store": "inventory"},
    )


class Inventory(inventory_pb2_grpc.InventoryServicer):
    def __init__(self, stock: StockStorage, faults: FaultInjector, instance_id: str) -> None:
        self.stock = stock
        self.faults = faults
        self.instance_id = instance_id

    async def GetStock(self, request: inventory_pb2.GetStockRequest, context: Any) -> inventory_pb2.Stock:  # noqa: N802
        await self.faults.apply(context, "GetStock")
        try:
            available = await self.stock.level(request.sku)
        except UnknownSku:
            await abort(context, _unknown_sku(request.sku))
        except StoreUnavailable as error:
            await abort(context, _store_unavailable(error))
        return inventory_pb2.Stock(sku=request.sku, available=available)

    async def Reserve(  # noqa: N802
        self, request: inventory_pb2.ReserveRequest, context: Any
    ) -> inventory_pb2.ReserveReply:
        await self.faults.apply(context, "Reserve")
        violations: list[Violation] = []
        if not request.reservation_id:
            violations.append(("reservation_id", "required: a key of yours, so that a retried Reserve reserves once"))
        if not request.sku:
            violations.append(("sku", "required: one of " + ", ".join(sorted(PRODUCTS))))
        if not 0 < request.quantity <= MAX_QUANTITY:
            violations.append(("quantity", f"must be between 1 and {MAX_QUANTITY}, got {request.quantity}"))
        if violations:
            await abort(context, bad_request("Reserve: invalid request, see the field violations", violations))
        try:
            made, replayed = await self.stock.reserve(request.reservation_id, request.sku, request.quantity)
        except StoreUnavailable as error:
            await abort(context, _store_unavailable(error))
        except UnknownSku:
            await abort(context, _unknown_sku(request.sku))
        except NotEnoughStock as error:
            await abort(
                context,
                with_info(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"not enough {error.sku}: {error.available} available, {error.wanted} asked; order fewer",
                    "OUT_OF_STOCK",
                    {"sku": error.sku, "available": str(error.available)},
                ),
            )
        except ReservationConflict:
            await abort(
                context,
                with_info(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"reservation {request.reservation_id!r} was made for another sku or quantity: "
                    "use a new reservation_id for a new reservation",
                    "RESERVATION_ID_REUSED",
                    {"reservation_id": request.reservation_id},
                ),
            )
        log.info(
            "reserved" if not replayed else "reservation replayed",
            extra={"reservation_id": made.reservation_id, "sku": made.sku, "quantity": made.quantity},
        )
        return inventory_pb2.ReserveReply(
            reservation_id=made.reservation_id, remaining=made.remaining, served_by=self.instance_id
        )

    async def Release(  # noqa: N802
        self, request: inventory_pb2.ReleaseRequest, context: Any
    ) -> inventory_pb2.ReleaseReply:
        await self.faults.apply(context, "Release")
        if not request.reservation_id:
            violation = ("reservation_id", "required: the reservation_id that Reserve was given")
            await abort(context, bad_request("Release: invalid request, see the field violations", [violation]))
        try:
            released = await self.stock.release(request.reservation_id)
        except StoreUnavailable as error:
            await abort(context, _store_unavailable(error))
        if released is not None:
            log.info(
                "released",
                extra={"reservation_id": released.reservation_id, "sku": released.sku, "quantity": released.quantity},
            )
        return inventory_pb2.ReleaseReply(
            reservation_id=request.reservation_id, released=released is not None, served_by=self.instance_id
        )
