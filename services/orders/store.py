"""Orders in memory, pure: each keeps its sequence number (the paging cursor) and the request_id that made it."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from shop.orders.v1 import orders_pb2


@dataclass
class OrderStore:
    _orders: list[tuple[int, orders_pb2.Order]] = field(default_factory=list)
    _by_id: dict[str, orders_pb2.Order] = field(default_factory=dict)
    _by_request: dict[str, orders_pb2.Order] = field(default_factory=dict)

    def add(self, request_id: str, order: orders_pb2.Order) -> orders_pb2.Order:
        """Store `order`, made for `request_id`; the order stored first wins when two raced for one request."""
        earlier = self._by_request.get(request_id)
        if earlier is not None:
            return earlier
        seq = self._orders[-1][0] + 1 if self._orders else 1
        self._orders.append((seq, order))
        self._by_id[order.order_id] = order
        self._by_request[request_id] = order
        return order

    def get(self, order_id: str) -> orders_pb2.Order | None:
        return self._by_id.get(order_id)

    def for_request(self, request_id: str) -> orders_pb2.Order | None:
        return self._by_request.get(request_id)

    def page(
        self, after: int, size: int, keep: Callable[[orders_pb2.Order], bool]
    ) -> tuple[list[orders_pb2.Order], int | None]:
        """Up to `size` orders after sequence number `after` that `keep` admits, and the cursor for the next
        page (None when there is none)."""
        found: list[orders_pb2.Order] = []
        last = after
        start = bisect.bisect_right(self._orders, after, key=lambda entry: entry[0])
        for seq, order in self._orders[start:]:
            if not keep(order):
                continue
            if len(found) == size:
                return found, last
            found.append(order)
            last = seq
        return found, None
