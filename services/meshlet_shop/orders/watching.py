"""WatchOrder's events, apart from gRPC and from any one storage: the order's state when the watch starts, then
each change seen by reading the storage again every `poll_s`, until a final state or `bound_s` (a client that
wants more watches again: a bounded watch holds no connection, task or storage reads for good).

Polling, not notifications: the storage may be another replica's Redis, and a watch is rare and short beside
the calls that change orders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from meshlet_shop_api.orders.v1 import orders_pb2

FINAL_STATES = frozenset({"PAID"})  # the shop's orders end paid; a state after it (SHIPPED, ...) would move this
POLL_S = 0.5
BOUND_S = 60.0

Read = Callable[[str], Awaitable[orders_pb2.Order | None]]


def event(order: orders_pb2.Order) -> orders_pb2.OrderEvent:
    return orders_pb2.OrderEvent(order_id=order.order_id, state=order.state, order=order)


async def order_events(
    first: orders_pb2.Order,
    read: Read,
    *,
    poll_s: float = POLL_S,
    bound_s: float = BOUND_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> AsyncIterator[orders_pb2.OrderEvent]:
    """`first` as an event, then one per change of state; ends after a final state, when the order is gone from
    the storage (a bounded store forgets its oldest), or once `bound_s` have passed."""
    until = clock() + bound_s
    order: orders_pb2.Order | None = first
    state = first.state
    yield event(first)
    while order is not None and order.state not in FINAL_STATES and clock() < until:
        await sleep(poll_s)
        order = await read(first.order_id)
        if order is not None and order.state != state:
            state = order.state
            yield event(order)
