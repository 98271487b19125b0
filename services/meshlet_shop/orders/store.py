"""Where orders live: `OrderStorage`, the interface the servicer uses, and its in-process implementation (the
default, what ``meshlet demo`` runs); meshlet_shop.orders.redis_store is the one replicas share (SHOP_STORE).

Orders in memory, pure: each keeps its sequence number (the paging cursor) and the request_id that made it.

Per instance and bounded: past `max_orders` the oldest order is forgotten (GetOrder then answers NOT_FOUND, and a
CreateOrder repeated with its request_id makes the order anew; inventory and payments replay their side of it
while they still hold their records). A sample shop's store, not a database: the bound (meshlet_shop.bounded's
100,000) keeps a long demo or a load test from growing the process without end."""

from __future__ import annotations

import bisect
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from meshlet_shop.bounded import MAX_RECORDS
from meshlet_shop.shared_store import MEMORY, connect, where
from meshlet_shop_api.orders.v1 import orders_pb2

Keep = Callable[[orders_pb2.Order], bool]


class OrderStorage(Protocol):
    """The orders a service holds: by id, by the request_id that made them, and in creation order for paging.
    Every method may raise meshlet_shop.shared_store.StoreUnavailable."""

    where: str

    async def add(self, request_id: str, order: orders_pb2.Order) -> orders_pb2.Order:
        """Store `order`; the order stored first wins when two raced for one request (that one is returned)."""
        ...

    async def get(self, order_id: str) -> orders_pb2.Order | None: ...

    async def for_request(self, request_id: str) -> orders_pb2.Order | None: ...

    async def page(self, after: int, size: int, keep: Keep) -> tuple[list[orders_pb2.Order], int | None]:
        """As `OrderStore.page`: the cursor is a sequence number every holder of the storage agrees on."""
        ...

    async def page_token_key(self) -> bytes:
        """The key that signs page tokens: shared by whoever shares the orders, so a token from one replica
        works on another."""
        ...

    async def close(self) -> None: ...


@dataclass
class OrderStore:
    max_orders: int = MAX_RECORDS
    _orders: list[tuple[int, orders_pb2.Order, str]] = field(default_factory=list)  # (seq, order, request_id)
    _by_id: dict[str, orders_pb2.Order] = field(default_factory=dict)
    _by_request: dict[str, orders_pb2.Order] = field(default_factory=dict)

    def add(self, request_id: str, order: orders_pb2.Order) -> orders_pb2.Order:
        """Store `order`, made for `request_id`; the order stored first wins when two raced for one request."""
        earlier = self._by_request.get(request_id)
        if earlier is not None:
            return earlier
        seq = self._orders[-1][0] + 1 if self._orders else 1
        self._orders.append((seq, order, request_id))
        self._by_id[order.order_id] = order
        self._by_request[request_id] = order
        while len(self._orders) > self.max_orders:
            _, oldest, oldest_request = self._orders.pop(0)
            self._by_id.pop(oldest.order_id, None)
            self._by_request.pop(oldest_request, None)
        return order

    def __len__(self) -> int:
        return len(self._orders)

    def get(self, order_id: str) -> orders_pb2.Order | None:
        return self._by_id.get(order_id)

    def for_request(self, request_id: str) -> orders_pb2.Order | None:
        return self._by_request.get(request_id)

    def page(self, after: int, size: int, keep: Keep) -> tuple[list[orders_pb2.Order], int | None]:
        """Up to `size` orders after sequence number `after` that `keep` admits, and the cursor for the next
        page (None when there is none). A cursor past forgotten orders still works: it is a sequence number."""
        found: list[orders_pb2.Order] = []
        last = after
        start = bisect.bisect_right(self._orders, after, key=lambda entry: entry[0])
        for seq, order, _ in self._orders[start:]:
            if not keep(order):
                continue
            if len(found) == size:
                return found, last
            found.append(order)
            last = seq
        return found, None


class InProcessOrders:
    """`OrderStore` behind the `OrderStorage` interface: this process's orders only."""

    def __init__(self, store: OrderStore | None = None) -> None:
        self.store = store or OrderStore()
        self.where = "memory (this instance only)"
        self._token_key = secrets.token_bytes(32)

    async def add(self, request_id: str, order: orders_pb2.Order) -> orders_pb2.Order:
        return self.store.add(request_id, order)

    async def get(self, order_id: str) -> orders_pb2.Order | None:
        return self.store.get(order_id)

    async def for_request(self, request_id: str) -> orders_pb2.Order | None:
        return self.store.for_request(request_id)

    async def page(self, after: int, size: int, keep: Keep) -> tuple[list[orders_pb2.Order], int | None]:
        return self.store.page(after, size, keep)

    async def page_token_key(self) -> bytes:
        return self._token_key

    async def close(self) -> None:
        return None


def open_storage(url: str) -> OrderStorage:
    """The storage SHOP_STORE names: ``memory`` or a Redis URL (meshlet_shop.shared_store)."""
    if url == MEMORY:
        return InProcessOrders()
    client = connect(url)  # first: it says which extra to install when redis is missing
    from meshlet_shop.orders.redis_store import RedisOrders  # imports redis: only when asked for

    return RedisOrders(client, where(url))
