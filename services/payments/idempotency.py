"""Charge once per idempotency key, pure: the map key -> charge that makes a retried Charge safe.

The same key with the same order and amount returns the first charge (``replayed``); the same key with other
values is refused with KeyReused: it is a client bug (a key reused for another payment), and answering with
the old charge would hide it. In memory and per instance: a sample shop, no database."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Charge:
    charge_id: str
    idempotency_key: str
    order_id: str
    amount_cents: int
    currency: str


class KeyReused(Exception):
    def __init__(self, earlier: Charge) -> None:
        self.earlier = earlier
        super().__init__(f"idempotency key {earlier.idempotency_key!r} was used for another charge")


@dataclass
class Ledger:
    prefix: str = "ch"
    charges: dict[str, Charge] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def charge(self, key: str, order_id: str, amount_cents: int, currency: str) -> tuple[Charge, bool]:
        """The charge for `key`, and whether it existed already (a replay)."""
        earlier = self.charges.get(key)
        if earlier is not None:
            if (earlier.order_id, earlier.amount_cents, earlier.currency) != (order_id, amount_cents, currency):
                raise KeyReused(earlier)
            return earlier, True
        made = Charge(f"{self.prefix}-{next(self._ids):06d}", key, order_id, amount_cents, currency)
        self.charges[key] = made
        return made, False
