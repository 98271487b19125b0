"""Where stock lives: `StockStorage`, the interface the servicer uses, and its in-process implementation (the
default, what ``meshlet demo`` runs); meshlet_shop.inventory.redis_stock is the one replicas share (SHOP_STORE).

Stock and reservations in memory, pure: the servicer maps its outcomes to gRPC statuses.

A reservation id makes Reserve idempotent: the same id again returns the first answer and takes nothing more.
In memory the state is per instance: a reservation retried on another instance reserves there, which the demo
(one instance) never meets; replicas share a Redis store instead. The reservation records are bounded
(meshlet_shop.bounded: 100,000, 24 hours): only a replay needs them, and a replay comes long before either bound."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from meshlet_shop.bounded import BoundedRecords
from meshlet_shop.shared_store import MEMORY, connect, where


class UnknownSku(LookupError):
    pass


class NotEnoughStock(Exception):
    def __init__(self, sku: str, available: int, wanted: int) -> None:
        self.sku, self.available, self.wanted = sku, available, wanted
        super().__init__(f"only {available} of {sku} left, {wanted} asked")


class ReservationConflict(Exception):
    """The reservation id was used before for another sku or quantity."""


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    sku: str
    quantity: int
    remaining: int  # stock left right after this reservation


class StockStorage(Protocol):
    """Stock levels and reservations, with `Stock`'s outcomes (UnknownSku, NotEnoughStock, ReservationConflict);
    every method may also raise meshlet_shop.shared_store.StoreUnavailable."""

    where: str

    async def seed(self, levels: Mapping[str, int]) -> None:
        """Stock the skus that have no level yet: a replica starting beside others keeps theirs."""
        ...

    async def level(self, sku: str) -> int: ...

    async def reserve(self, reservation_id: str, sku: str, quantity: int) -> tuple[Reservation, bool]:
        """As `Stock.reserve`, atomically for everyone sharing the storage."""
        ...

    async def release(self, reservation_id: str) -> Reservation | None:
        """As `Stock.release`: of two releases of one reservation, one gives the stock back."""
        ...

    async def close(self) -> None: ...


@dataclass
class Stock:
    available: dict[str, int]
    reservations: BoundedRecords[str, Reservation] = field(default_factory=BoundedRecords)

    @classmethod
    def seeded(cls, levels: Mapping[str, int]) -> Stock:
        return cls(dict(levels))

    def level(self, sku: str) -> int:
        if sku not in self.available:
            raise UnknownSku(sku)
        return self.available[sku]

    def reserve(self, reservation_id: str, sku: str, quantity: int) -> tuple[Reservation, bool]:
        """Take `quantity` of `sku`; returns the reservation and whether it was already made (a replay)."""
        earlier = self.reservations.get(reservation_id)
        if earlier is not None:
            if (earlier.sku, earlier.quantity) != (sku, quantity):
                raise ReservationConflict(reservation_id)
            return earlier, True
        available = self.level(sku)
        if quantity > available:
            raise NotEnoughStock(sku, available, quantity)
        self.available[sku] = available - quantity
        made = Reservation(reservation_id, sku, quantity, available - quantity)
        self.reservations.put(reservation_id, made)
        return made, False

    def release(self, reservation_id: str) -> Reservation | None:
        """Give a reservation's quantity back and forget it; None when there is none (released before, never
        made here, or forgotten), which changes nothing. Forgotten rather than marked: an order that failed is
        repeated with the same request_id, and its Reserve must then take the stock again."""
        made = self.reservations.pop(reservation_id)
        if made is None:
            return None
        self.available[made.sku] = self.available.get(made.sku, 0) + made.quantity
        return made


class InProcessStock:
    """`Stock` behind the `StockStorage` interface: this process's stock only."""

    def __init__(self, stock: Stock | None = None) -> None:
        self.stock = stock or Stock({})
        self.where = "memory (this instance only)"

    async def seed(self, levels: Mapping[str, int]) -> None:
        for sku, level in levels.items():
            self.stock.available.setdefault(sku, level)

    async def level(self, sku: str) -> int:
        return self.stock.level(sku)

    async def reserve(self, reservation_id: str, sku: str, quantity: int) -> tuple[Reservation, bool]:
        return self.stock.reserve(reservation_id, sku, quantity)

    async def release(self, reservation_id: str) -> Reservation | None:
        return self.stock.release(reservation_id)

    async def close(self) -> None:
        return None


def open_storage(url: str) -> StockStorage:
    """The storage SHOP_STORE names: ``memory`` or a Redis URL (meshlet_shop.shared_store)."""
    if url == MEMORY:
        return InProcessStock()
    client = connect(url)  # first: it says which extra to install when redis is missing
    from meshlet_shop.inventory.redis_stock import RedisStock  # imports redis: only when asked for

    return RedisStock(client, where(url))
