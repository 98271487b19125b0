"""Payments' ledger and inventory's reservations: the same key twice takes effect once."""

from __future__ import annotations

import pytest

from meshlet_shop.inventory.stock import NotEnoughStock, ReservationConflict, Stock, UnknownSku
from meshlet_shop.payments.idempotency import KeyReused, Ledger


def test_a_key_charges_once_and_replays() -> None:
    ledger = Ledger()
    first, replayed = ledger.charge("k", "o1", 500, "EUR")
    again, replayed_again = ledger.charge("k", "o1", 500, "EUR")
    assert (again, replayed, replayed_again) == (first, False, True)
    assert len(ledger.charges) == 1
    assert ledger.charge("k2", "o2", 500, "EUR")[0].charge_id != first.charge_id


def test_a_key_reused_for_another_payment_is_refused() -> None:
    ledger = Ledger()
    ledger.charge("k", "o1", 500, "EUR")
    with pytest.raises(KeyReused) as error:
        ledger.charge("k", "o1", 600, "EUR")
    assert error.value.earlier.amount_cents == 500


def test_a_reservation_id_reserves_once() -> None:
    stock = Stock.seeded({"tea": 5})
    made, replayed = stock.reserve("r1", "tea", 2)
    again, replayed_again = stock.reserve("r1", "tea", 2)
    assert (made, replayed, replayed_again, stock.level("tea")) == (again, False, True, 3)
    with pytest.raises(ReservationConflict):
        stock.reserve("r1", "tea", 1)
    with pytest.raises(NotEnoughStock):
        stock.reserve("r2", "tea", 4)
    with pytest.raises(UnknownSku):
        stock.reserve("r3", "coffee", 1)


def test_a_release_gives_the_stock_back_once_and_a_repeated_reserve_takes_it_again() -> None:
    stock = Stock.seeded({"tea": 5})
    stock.reserve("r1", "tea", 2)
    released = stock.release("r1")
    assert released is not None
    assert (released.quantity, stock.level("tea")) == (2, 5)
    assert stock.release("r1") is None  # a repeated release changes nothing
    assert stock.level("tea") == 5
    assert stock.release("never-made") is None
    assert stock.reserve("r1", "tea", 2)[1] is False  # the order repeated with its request_id reserves anew
    assert stock.level("tea") == 3
