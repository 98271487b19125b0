"""Stock and reservations in Redis, shared by every inventory replica (SHOP_STORE=redis://...).

Layout, under one prefix (a hash tag, so that a Redis Cluster keeps every key in one slot): ``stock``, sku ->
units available; ``reservations``, reservation id -> the reservation as JSON; ``reserved-at`` and
``reserved-in-turn``, sorted sets of reservation ids scored by when they were made and by a counter
(``reservation-counter``), to forget them past meshlet_shop.bounded's age and count, as in memory.

Reserve and Release are each one Lua script, which Redis runs atomically: the check of a reservation id, the
check of the level and the taking of the stock happen in one step, so two replicas reserving the last units
never both get them, a reservation id reserves once whichever replica sees it, and of two releases of one
reservation only one gives its units back.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from meshlet_shop.bounded import MAX_AGE_S, MAX_RECORDS
from meshlet_shop.inventory.stock import NotEnoughStock, Reservation, ReservationConflict, UnknownSku
from meshlet_shop.shared_store import StoreUnavailable, connect, where

PREFIX = "shop:{inventory}:"

# KEYS: stock, reservations, reserved-at (by time: the age bound), reserved-in-turn (by a counter: the count bound,
# exact where two reservations share a timestamp), the counter. ARGV[1..3] of every script: now, max age, max
# records.
_FORGET_OLD = """
local function forget(ids)
    for _, id in ipairs(ids) do
        redis.call('HDEL', KEYS[2], id)
        redis.call('ZREM', KEYS[3], id)
        redis.call('ZREM', KEYS[4], id)
    end
end
local now, max_age, max_records = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
forget(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - max_age))
"""

# ARGV[4..6]: reservation id, sku, quantity. Answers {outcome, detail}.
_RESERVE = (
    _FORGET_OLD
    + """
local earlier = redis.call('HGET', KEYS[2], ARGV[4])
if earlier then return {'replayed', earlier} end
local level = redis.call('HGET', KEYS[1], ARGV[5])
if not level then return {'unknown', ''} end
local available, quantity = tonumber(level), tonumber(ARGV[6])
if quantity > available then return {'short', tostring(available)} end
redis.call('HSET', KEYS[1], ARGV[5], available - quantity)
local made = cjson.encode({sku = ARGV[5], quantity = quantity, remaining = available - quantity})
redis.call('HSET', KEYS[2], ARGV[4], made)
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[4])
local excess = redis.call('ZCARD', KEYS[4]) - max_records
if excess > 0 then forget(redis.call('ZRANGE', KEYS[4], 0, excess - 1)) end
return {'made', made}
"""
)

# ARGV[4]: reservation id. Answers the reservation released, or nil.
_RELEASE = (
    _FORGET_OLD
    + """
local made = redis.call('HGET', KEYS[2], ARGV[4])
if not made then return nil end
local reservation = cjson.decode(made)
redis.call('HINCRBY', KEYS[1], reservation.sku, reservation.quantity)
forget({ARGV[4]})
return made
"""
)


def _reservation(reservation_id: str, record: bytes) -> Reservation:
    fields = json.loads(record)
    return Reservation(reservation_id, fields["sku"], int(fields["quantity"]), int(fields["remaining"]))


class RedisStock:
    def __init__(
        self,
        client: Redis,
        shown: str,
        *,
        prefix: str = PREFIX,
        max_records: int = MAX_RECORDS,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.time,  # wall time: every replica's clock reads the same records
    ) -> None:
        self.client: Any = client  # Any: redis-py types its replies for its sync and asyncio clients at once
        self.where = f"redis at {shown}, shared by every inventory instance"
        self._shown = shown
        names = ("stock", "reservations", "reserved-at", "reserved-in-turn", "reservation-counter")
        self._keys = [prefix + name for name in names]
        self._bounds = (max_age_s, max_records)
        self._clock = clock
        self._reserve: Any = client.register_script(_RESERVE)
        self._release: Any = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisStock:
        return cls(connect(url), where(url), **kwargs)

    @asynccontextmanager
    async def _answered(self) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError) as error:
            raise StoreUnavailable(f"the inventory store at {self._shown} did not answer ({error})") from error

    def _args(self, *args: str | int) -> list[str | int | float]:
        return [self._clock(), *self._bounds, *args]

    async def seed(self, levels: Mapping[str, int]) -> None:
        async with self._answered():
            for sku, level in levels.items():
                await self.client.hsetnx(self._keys[0], sku, level)

    async def level(self, sku: str) -> int:
        async with self._answered():
            level = await self.client.hget(self._keys[0], sku)
        if level is None:
            raise UnknownSku(sku)
        return int(level)

    async def reserve(self, reservation_id: str, sku: str, quantity: int) -> tuple[Reservation, bool]:
        async with self._answered():
            outcome, detail = await self._reserve(keys=self._keys, args=self._args(reservation_id, sku, quantity))
        if outcome == b"unknown":
            raise UnknownSku(sku)
        if outcome == b"short":
            raise NotEnoughStock(sku, int(detail), quantity)
        made = _reservation(reservation_id, detail)
        if outcome == b"replayed" and (made.sku, made.quantity) != (sku, quantity):
            raise ReservationConflict(reservation_id)
        return made, outcome == b"replayed"

    async def release(self, reservation_id: str) -> Reservation | None:
        async with self._answered():
            made = await self._release(keys=self._keys, args=self._args(reservation_id))
        return None if made is None else _reservation(reservation_id, made)

    async def close(self) -> None:
        await self.client.aclose()
