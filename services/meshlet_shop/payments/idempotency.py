"""Charge once per idempotency key, pure: the records key -> charge that make a retried Charge safe.

The same key with the same order and amount returns the first charge (``replayed``); the same key with other
values is refused with KeyReused: it is a client bug (a key reused for another payment), and answering with
the old charge would hide it. `Ledger` keeps the records in memory, per instance and bounded (see
meshlet_shop.bounded): the fallback when payments has no Consul agent beside it; meshlet_shop.payments.consul_ledger
keeps them in Consul KV, shared by every instance."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field

from meshlet_shop.bounded import BoundedRecords


@dataclass(frozen=True)
class Charge:
    charge_id: str
    idempotency_key: str
    order_id: str
    amount_cents: int
    currency: str
    created_at: float = 0.0  # unix seconds, for the ledger's retention; 0: unknown (a record kept for good)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Charge:
        """A stored record; raises ValueError (KeyError, TypeError included) for one that is not a charge."""
        data = json.loads(text)
        return cls(
            charge_id=str(data["charge_id"]),
            idempotency_key=str(data["idempotency_key"]),
            order_id=str(data["order_id"]),
            amount_cents=int(data["amount_cents"]),
            currency=str(data["currency"]),
            created_at=float(data.get("created_at", 0.0)),
        )


class KeyReused(Exception):
    def __init__(self, earlier: Charge) -> None:
        self.earlier = earlier
        super().__init__(f"idempotency key {earlier.idempotency_key!r} was used for another charge")


def replay(earlier: Charge, order_id: str, amount_cents: int, currency: str) -> Charge:
    """`earlier` when the request repeats it; KeyReused when the key is asked for another payment."""
    if (earlier.order_id, earlier.amount_cents, earlier.currency) != (order_id, amount_cents, currency):
        raise KeyReused(earlier)
    return earlier


@dataclass
class Ledger:
    prefix: str = "ch"
    charges: BoundedRecords[str, Charge] = field(default_factory=BoundedRecords)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def charge(self, key: str, order_id: str, amount_cents: int, currency: str) -> tuple[Charge, bool]:
        """The charge for `key`, and whether it existed already (a replay)."""
        earlier = self.charges.get(key)
        if earlier is not None:
            return replay(earlier, order_id, amount_cents, currency), True
        made = Charge(f"{self.prefix}-{next(self._ids):06d}", key, order_id, amount_cents, currency)
        self.charges.put(key, made)
        return made, False
