"""Orders in memory, pure: each keeps its sequence number (the paging cursor) and the request_id that made it.

Per instance and bounded: past `max_orders` the oldest order is forgotten (GetOrder then answers NOT_FOUND, and a
CreateOrder repeated with its request_id makes the order anew; inventory and payments replay their side of it
while they still hold their records). A sample shop's store, not a database: the bound (meshlet_shop.bounded's
100,000) keeps a long demo or a load test from growing the process without end."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from meshlet_shop.bounded import MAX_RECORDS
from meshlet_shop_api.orders.v1 import orders_pb2


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

    def page(
        self, after: int, size: int, keep: Callable[[orders_pb2.Order], bool]
    ) -> tuple[list[orders_pb2.Order], int | None]:
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
