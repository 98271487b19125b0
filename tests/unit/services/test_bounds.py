"""The shop's in-memory records are bounded by count and age: a long demo or a load test cannot grow a process
without end, and a replay within the bounds still finds its record."""

from __future__ import annotations

from meshlet_shop.bounded import BoundedRecords
from meshlet_shop.inventory.stock import Stock
from meshlet_shop.orders.store import OrderStore
from meshlet_shop.payments.idempotency import Ledger
from meshlet_shop_api.orders.v1 import orders_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_oldest_record_goes_past_the_count() -> None:
    records: BoundedRecords[str, int] = BoundedRecords(max_records=2)
    for n, key in enumerate("abc"):
        records.put(key, n)
    assert (records.get("a"), records.get("b"), records.get("c"), len(records)) == (None, 1, 2, 2)


def test_records_expire_past_their_age() -> None:
    clock = Clock()
    records: BoundedRecords[str, int] = BoundedRecords(max_age_s=60, clock=clock)
    records.put("a", 1)
    clock.now = 30
    records.put("b", 2)
    clock.now = 61
    assert (records.get("a"), records.get("b"), len(records)) == (None, 2, 1)


def test_the_payments_ledger_is_bounded_and_replays_within_the_bound() -> None:
    ledger = Ledger(charges=BoundedRecords(max_records=3))
    first, _ = ledger.charge("k0", "o0", 100, "EUR")
    for n in range(1, 3):
        ledger.charge(f"k{n}", f"o{n}", 100, "EUR")
    assert ledger.charge("k0", "o0", 100, "EUR") == (first, True)  # still held: a replay
    for n in range(3, 10):
        ledger.charge(f"k{n}", f"o{n}", 100, "EUR")
    assert len(ledger.charges) == 3


def test_inventory_reservations_are_bounded() -> None:
    stock = Stock(available={"tea": 100}, reservations=BoundedRecords(max_records=5))
    for n in range(20):
        stock.reserve(f"r{n}", "tea", 1)
    assert len(stock.reservations) == 5
    assert stock.level("tea") == 80  # forgetting a record gives no stock back


def test_the_order_store_forgets_its_oldest_orders_and_pages_on() -> None:
    store = OrderStore(max_orders=3)
    for n in range(5):
        store.add(f"req-{n}", orders_pb2.Order(order_id=f"ord-{n}", customer_id="c"))
    assert len(store) == 3
    assert store.get("ord-0") is None
    assert store.for_request("req-1") is None
    orders, cursor = store.page(0, 2, lambda order: True)
    assert [order.order_id for order in orders] == ["ord-2", "ord-3"]
    assert cursor is not None
    assert [order.order_id for order in store.page(cursor, 2, lambda order: True)[0]] == ["ord-4"]
