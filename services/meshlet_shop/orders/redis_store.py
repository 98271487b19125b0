"""Orders in Redis, shared by every orders replica (SHOP_STORE=redis://...).

Layout, under one prefix (a hash tag, so that a Redis Cluster keeps every key in one slot): ``seq``, a counter
that numbers orders in creation order (ListOrders' cursor, the same for every replica); ``orders``, order id ->
the Order's bytes; ``requests``, request_id -> order id; ``request-of``, order id -> request_id (to forget both
together); ``by-seq``, a sorted set of order ids scored by their number; ``page-token-key``, the key that signs
page tokens, made by whichever replica asks first. An order is added by one Lua script, atomically: of two
replicas racing on one request_id the first wins and the second gets its order back; past `max_orders` the oldest
are forgotten, as in memory (meshlet_shop.orders.store).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from meshlet_shop.bounded import MAX_RECORDS
from meshlet_shop.orders.store import Keep
from meshlet_shop.shared_store import StoreUnavailable, connect, where
from meshlet_shop_api.orders.v1 import orders_pb2

PREFIX = "shop:{orders}:"
SCAN_BATCH = 200  # order ids read per round trip while a filtered page fills

_ADD = """
local earlier = redis.call('HGET', KEYS[3], ARGV[1])
if earlier then
    local body = redis.call('HGET', KEYS[2], earlier)
    if body then return body end
end
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[4], seq, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[2], ARGV[1])
local excess = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[4])
if excess > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, excess - 1)) do
        local request = redis.call('HGET', KEYS[5], id)
        if request then redis.call('HDEL', KEYS[3], request) end
        redis.call('HDEL', KEYS[2], id)
        redis.call('HDEL', KEYS[5], id)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, excess - 1)
end
return ARGV[3]
"""


@asynccontextmanager
async def _answered(url_shown: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as error:
        raise StoreUnavailable(f"the orders store at {url_shown} did not answer ({error})") from error


class RedisOrders:
    def __init__(self, client: Redis, shown: str, *, prefix: str = PREFIX, max_orders: int = MAX_RECORDS) -> None:
        self.client: Any = client  # Any: redis-py types its replies for its sync and asyncio clients at once
        self.where = f"redis at {shown}, shared by every orders instance"
        self._shown = shown
        self._max_orders = max_orders
        self._keys = {name: prefix + name for name in ("seq", "orders", "requests", "by-seq", "request-of")}
        self._token_key_name = prefix + "page-token-key"
        self._add: Any = client.register_script(_ADD)
        self._token_key: bytes | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisOrders:
        return cls(connect(url), where(url), **kwargs)

    async def add(self, request_id: str, order: orders_pb2.Order) -> orders_pb2.Order:
        k = self._keys
        keys = [k["seq"], k["orders"], k["requests"], k["by-seq"], k["request-of"]]
        async with _answered(self._shown):
            body = await self._add(
                keys=keys, args=[request_id, order.order_id, order.SerializeToString(), self._max_orders]
            )
        return orders_pb2.Order.FromString(body)

    async def get(self, order_id: str) -> orders_pb2.Order | None:
        async with _answered(self._shown):
            body = await self.client.hget(self._keys["orders"], order_id)
        return None if body is None else orders_pb2.Order.FromString(body)

    async def for_request(self, request_id: str) -> orders_pb2.Order | None:
        async with _answered(self._shown):
            order_id = await self.client.hget(self._keys["requests"], request_id)
            if order_id is None:
                return None
            body = await self.client.hget(self._keys["orders"], order_id)
        return None if body is None else orders_pb2.Order.FromString(body)

    async def page(self, after: int, size: int, keep: Keep) -> tuple[list[orders_pb2.Order], int | None]:
        """Up to `size` orders numbered after `after` that `keep` admits, read in batches (a filter may skip
        many), and the cursor of the next page: None once no further order matches."""
        found: list[orders_pb2.Order] = []
        last = scanned = after
        async with _answered(self._shown):
            while True:
                batch = await self.client.zrangebyscore(
                    self._keys["by-seq"], f"({scanned}", "+inf", start=0, num=SCAN_BATCH, withscores=True
                )
                if not batch:
                    return found, None
                bodies = await self.client.hmget(self._keys["orders"], [order_id for order_id, _ in batch])
                for (_, score), body in zip(batch, bodies, strict=True):
                    scanned = int(score)
                    if body is None:  # forgotten between the two reads
                        continue
                    order = orders_pb2.Order.FromString(body)
                    if not keep(order):
                        continue
                    if len(found) == size:
                        return found, last
                    found.append(order)
                    last = scanned

    async def page_token_key(self) -> bytes:
        if self._token_key is None:
            async with _answered(self._shown):
                await self.client.set(self._token_key_name, secrets.token_bytes(32), nx=True)
                key = await self.client.get(self._token_key_name)
            if key is None:  # deleted between the two calls: the next call makes one again
                raise StoreUnavailable(f"the page token key at {self._shown} vanished; repeat the call")
            self._token_key = bytes(key)
        return self._token_key

    async def close(self) -> None:
        await self.client.aclose()
