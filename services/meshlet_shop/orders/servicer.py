"""The Orders API: CreateOrder reserves each item in inventory and charges payments through the mesh, in a way
that a retried CreateOrder (same request_id) repeats safely: reservation ids and the payment's idempotency key
derive from the request_id, and so does the order id. An order that fails after reserving releases what it
reserved. GetOrder, ListOrders and WatchOrder read the orders storage: this instance's (the default) or one that every
replica shares (meshlet_shop.orders.store, SHOP_STORE)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from meshlet_shop.catalog import CURRENCY, PRODUCTS
from meshlet_shop.faults import FaultInjector
from meshlet_shop.orders.filtering import FilterError, matches, parse_filter
from meshlet_shop.orders.pagination import PageTokenError, PageTokens, page_size
from meshlet_shop.orders.store import InProcessOrders, OrderStorage
from meshlet_shop.orders.watching import order_events
from meshlet_shop.shared_store import StoreUnavailable
from meshlet_shop.status import LEFT_TO_THE_MESH, Violation, abort, bad_request, with_info
from meshlet_shop_api.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshlet_shop_api.orders.v1 import orders_pb2, orders_pb2_grpc
from meshlet_shop_api.payments.v1 import payments_pb2, payments_pb2_grpc

log = logging.getLogger("meshlet_shop.orders")
MAX_ITEMS = 50
MAX_QUANTITY = 1000
MAX_KEY_CHARS = 128
PAID = "PAID"
NOT_CREATED = "the order was not created"
RELEASE_TIMEOUT_S = 2.0


class NotCreated(Exception):
    """An upstream said no: the order is not made, and `status` is the answer once its reservations are back."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


def order_id_for(request_id: str) -> str:
    """Derived from the request_id, so a CreateOrder retried after a crash charges the same order."""
    return "ord-" + hashlib.sha256(request_id.encode()).hexdigest()[:16]


def reservation_id(request_id: str, index: int) -> str:
    """Derived from the request_id, so a retried CreateOrder replays its reservations instead of taking more."""
    return f"{request_id}/{index}"


def validate(request: orders_pb2.CreateOrderRequest) -> list[Violation]:
    violations: list[Violation] = []
    if not request.request_id:
        violations.append(("request_id", "required: a key per order (a UUID), so that a retry creates one order"))
    elif len(request.request_id) > MAX_KEY_CHARS:
        violations.append(("request_id", f"at most {MAX_KEY_CHARS} characters"))
    if not request.customer_id:
        violations.append(("customer_id", "required"))
    if not 0 < len(request.items) <= MAX_ITEMS:
        violations.append(("items", f"between 1 and {MAX_ITEMS} line items, got {len(request.items)}"))
    for i, item in enumerate(request.items):
        if item.sku not in PRODUCTS:
            known = ", ".join(sorted(PRODUCTS))
            violations.append((f"items[{i}].sku", f"unknown sku {item.sku!r}: one of {known}"))
        if not 0 < item.quantity <= MAX_QUANTITY:
            violations.append((f"items[{i}].quantity", f"between 1 and {MAX_QUANTITY}, got {item.quantity}"))
    return violations


def same_order(order: orders_pb2.Order, request: orders_pb2.CreateOrderRequest) -> bool:
    return order.customer_id == request.customer_id and list(order.items) == list(request.items)


class Orders(orders_pb2_grpc.OrdersServicer):
    def __init__(
        self,
        channel: Callable[[str], grpc.aio.Channel],
        faults: FaultInjector,
        *,
        store: OrderStorage | None = None,
        tokens: PageTokens | None = None,
    ) -> None:
        self.inventory = inventory_pb2_grpc.InventoryStub(channel("inventory"))
        self.payments = payments_pb2_grpc.PaymentsStub(channel("payments"))
        self.faults = faults
        self.store = store or InProcessOrders()
        self._tokens = tokens

    async def tokens(self) -> PageTokens:
        """Signed with the storage's key: a page token one replica issues, another one sharing the storage reads."""
        if self._tokens is None:
            self._tokens = PageTokens(await self.store.page_token_key())
        return self._tokens

    async def CreateOrder(self, request: orders_pb2.CreateOrderRequest, context: Any) -> orders_pb2.Order:  # noqa: N802
        await self.faults.apply(context, "CreateOrder")
        violations = validate(request)
        if violations:
            await abort(context, bad_request("CreateOrder: invalid order, see the field violations", violations))
        try:
            earlier = await self.store.for_request(request.request_id)
        except StoreUnavailable as error:
            await abort(context, _store_unavailable(error))
        if earlier is not None:
            if not same_order(earlier, request):
                await abort(context, _request_id_reused(request.request_id, earlier.order_id))
            return earlier
        order_id = order_id_for(request.request_id)
        attempted: list[str] = []
        try:
            for i, item in enumerate(request.items):
                attempted.append(reservation_id(request.request_id, i))
                await self._reserve(request.request_id, i, item)
            charged = await self._charge(request, order_id)
        except NotCreated as failure:
            # Released before answering: context.abort sends the status at once, and a caller that retries the
            # same request_id on seeing it must not have its replayed reservation released under it.
            await self._release(attempted)
            await abort(context, failure.status)
        except (Exception, asyncio.CancelledError):
            # The order is not made: give back what was reserved for it (the failing reservation too, which a
            # timed-out Reserve may have made), so that stock is not held by orders that do not exist.
            await self._release(attempted)
            raise
        order = orders_pb2.Order(
            order_id=order_id,
            customer_id=request.customer_id,
            items=request.items,
            charge_id=charged.charge_id,
            state=PAID,
        )
        try:
            order = await self.store.add(request.request_id, order)
        except StoreUnavailable as error:  # paid, not stored: the same request_id again replays and stores it
            await abort(context, _store_unavailable(error))
        log.info("order paid", extra={"order_id": order.order_id, "charge_id": order.charge_id})
        return order

    async def _charge(self, request: orders_pb2.CreateOrderRequest, order_id: str) -> payments_pb2.ChargeReply:
        amount = sum(PRODUCTS[item.sku].price_cents * item.quantity for item in request.items)
        charge = payments_pb2.ChargeRequest(
            idempotency_key=request.request_id, order_id=order_id, amount_cents=amount, currency=CURRENCY
        )
        try:
            reply: payments_pb2.ChargeReply = await self.payments.Charge(charge)
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.ALREADY_EXISTS:
                raise NotCreated(_request_id_reused(request.request_id, order_id)) from None
            raise _unexpected(error, "payments") from None
        return reply

    async def _release(self, reservation_ids: list[str]) -> None:
        """Best effort, never raises: a reservation that cannot be released stays taken (logged), as it would if
        orders crashed here. Inventory's state is per instance, so with several instances a Release the mesh
        routes to another one than the Reserve's finds nothing there (released=false, logged)."""
        for rid in reservation_ids:
            try:  # Release is IDEMPOTENT: the mesh retries it within its budget, which an app loop must not bypass
                reply = await self.inventory.Release(
                    inventory_pb2.ReleaseRequest(reservation_id=rid), timeout=RELEASE_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as error:
                log.warning("reservation %s not released: %s %s", rid, error.code().name, error.details())
                continue
            if reply.released:
                log.info("reservation released", extra={"reservation_id": rid, "served_by": reply.served_by})
            else:
                log.info("no reservation to release", extra={"reservation_id": rid, "served_by": reply.served_by})

    async def _reserve(self, request_id: str, index: int, item: orders_pb2.LineItem) -> None:
        reserve = inventory_pb2.ReserveRequest(
            reservation_id=reservation_id(request_id, index), sku=item.sku, quantity=item.quantity
        )
        try:
            await self.inventory.Reserve(reserve)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code is grpc.StatusCode.NOT_FOUND:
                violation = (f"items[{index}].sku", f"inventory does not stock {item.sku!r}: {error.details()}")
                raise NotCreated(bad_request("CreateOrder: an item cannot be ordered", [violation])) from None
            if code is grpc.StatusCode.FAILED_PRECONDITION:
                raise NotCreated(
                    with_info(
                        code,
                        f"{NOT_CREATED}: items[{index}]: {error.details()}",
                        "OUT_OF_STOCK",
                        {"sku": item.sku, "item": str(index)},
                    )
                ) from None
            raise _unexpected(error, "inventory") from None

    async def GetOrder(self, request: orders_pb2.GetOrderRequest, context: Any) -> orders_pb2.Order:  # noqa: N802
        await self.faults.apply(context, "GetOrder")
        if not request.order_id:
            await abort(context, bad_request("GetOrder: order_id is required", [("order_id", "required")]))
        try:
            order = await self.store.get(request.order_id)
        except StoreUnavailable as error:
            await abort(context, _store_unavailable(error))
        if order is None:
            await abort(context, _order_not_found(request.order_id))
        return order

    async def WatchOrder(  # noqa: N802
        self, request: orders_pb2.WatchOrderRequest, context: Any
    ) -> AsyncIterator[orders_pb2.OrderEvent]:
        await self.faults.apply(context, "WatchOrder")
        if not request.order_id:
            await abort(context, bad_request("WatchOrder: order_id is required", [("order_id", "required")]))
        try:
            order = await self.store.get(request.order_id)
            if order is None:
                await abort(context, _order_not_found(request.order_id))
            async for changed in order_events(order, self.store.get):
                yield changed
        except StoreUnavailable as error:
            await abort(context, _store_unavailable(error))

    async def ListOrders(  # noqa: N802
        self, request: orders_pb2.ListOrdersRequest, context: Any
    ) -> orders_pb2.ListOrdersResponse:
        await self.faults.apply(context, "ListOrders")
        violations: list[Violation] = []
        size = terms = after = None
        try:
            size = page_size(request.page_size)
        except ValueError as error:
            violations.append(("page_size", str(error)))
        try:
            terms = parse_filter(request.filter)
        except FilterError as error:
            violations.append(("filter", str(error)))
        try:
            tokens = await self.tokens()
        except StoreUnavailable as error:
            await abort(context, _store_unavailable(error))
        try:
            after = tokens.read(request.page_token, request.filter) if request.page_token else 0
        except PageTokenError as error:
            violations.append(("page_token", str(error)))
        if violations or size is None or terms is None or after is None:
            await abort(context, bad_request("ListOrders: invalid request, see the field violations", violations))
        chosen = terms
        try:
            orders, next_after = await self.store.page(after, size, lambda order: matches(chosen, order))
        except StoreUnavailable as error:
            await abort(context, _store_unavailable(error))
        token = tokens.issue(next_after, request.filter) if next_after is not None else ""
        return orders_pb2.ListOrdersResponse(orders=orders, next_page_token=token)


def _request_id_reused(request_id: str, order_id: str) -> grpc.Status:
    return with_info(
        grpc.StatusCode.ALREADY_EXISTS,
        f"request_id {request_id!r} already made order {order_id} with other items or another customer: "
        "a new order needs a new request_id; a retry must repeat the same order",
        "REQUEST_ID_REUSED",
        {"request_id": request_id, "order_id": order_id},
    )


def _order_not_found(order_id: str) -> grpc.Status:
    return with_info(
        grpc.StatusCode.NOT_FOUND,
        f"no order {order_id!r} here: ListOrders lists the orders there are",
        "ORDER_NOT_FOUND",
        {"order_id": order_id},
    )


def _store_unavailable(error: StoreUnavailable) -> grpc.Status:
    return with_info(
        grpc.StatusCode.UNAVAILABLE,
        f"{error}: repeat the call (with the same request_id for CreateOrder) once the store is back",
        "STORE_UNAVAILABLE",
        {"store": "orders"},
    )


def _unexpected(error: grpc.aio.AioRpcError, upstream: str) -> Exception:
    """What orders raises for a failed call it has no answer of its own for: a failure it leaves to the mesh
    (meshlet_shop.status.LEFT_TO_THE_MESH) as it is, so that CreateOrder releases what it reserved and lets it
    escape; an application answer the code above did not expect means orders and its upstream disagree:
    INTERNAL, naming it."""
    left: Exception = error
    if error.code() in LEFT_TO_THE_MESH:
        return left
    return NotCreated(_rejected(error, upstream))


def _rejected(error: grpc.aio.AioRpcError, upstream: str) -> grpc.Status:
    return with_info(
        grpc.StatusCode.INTERNAL,
        f"{NOT_CREATED}: {upstream} refused a request orders made ({error.code().name}: {error.details()})",
        "UPSTREAM_REJECTED",
        {"upstream": upstream, "upstream_code": error.code().name},
    )
