"""ListOrders paging: page sizes, signed page tokens bound to their filter, filters, and the keyset cursor."""

from __future__ import annotations

import base64

import pytest

from meshlet_shop.orders.filtering import FilterError, matches, parse_filter
from meshlet_shop.orders.pagination import MAX_PAGE_SIZE, PageTokenError, PageTokens, page_size
from meshlet_shop.orders.store import OrderStore
from meshlet_shop_api.orders.v1 import orders_pb2

TOKENS = PageTokens(b"k" * 32)


def _with_body(token: str, body: bytes) -> str:
    return base64.urlsafe_b64encode(body).rstrip(b"=").decode() + "." + token.partition(".")[2]


def test_page_size_defaults_and_clamps() -> None:
    assert page_size(0) == 20
    assert page_size(7) == 7
    assert page_size(10_000) == MAX_PAGE_SIZE
    with pytest.raises(ValueError, match="0"):
        page_size(-1)


def test_a_token_round_trips_for_its_filter() -> None:
    assert TOKENS.read(TOKENS.issue(42, "state=PAID"), "state=PAID") == 42


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "",
        TOKENS.issue(42, "")[:-3] + "xyz",  # signature altered
        _with_body(TOKENS.issue(42, ""), b'{"after":0,"filter":""}'),  # body altered, signature kept
        PageTokens(b"other" * 8).issue(42, ""),  # another instance's
    ],
)
def test_altered_or_foreign_tokens_are_refused(token: str) -> None:
    with pytest.raises(PageTokenError, match="next_page_token"):
        TOKENS.read(token, "")


def test_a_token_is_refused_with_another_filter() -> None:
    with pytest.raises(PageTokenError, match="keep the filter"):
        TOKENS.read(TOKENS.issue(1, "customer_id=c-1"), "customer_id=c-2")


def test_filters() -> None:
    assert parse_filter("") == {}
    assert parse_filter("state=PAID AND customer_id = c-1") == {"state": "PAID", "customer_id": "c-1"}
    order = orders_pb2.Order(customer_id="c-1", state="PAID")
    assert matches(parse_filter("state=PAID and customer_id=c-1"), order)
    assert not matches(parse_filter("customer_id=c-2"), order)
    with pytest.raises(FilterError, match="customer_id, state"):
        parse_filter("colour=red")
    with pytest.raises(FilterError, match="field=value"):
        parse_filter("state")


def test_pages_follow_the_cursor_and_skip_filtered_orders() -> None:
    store = OrderStore()
    for i in range(5):
        store.add(f"r{i}", orders_pb2.Order(order_id=f"o{i}", customer_id="odd" if i % 2 else "even"))
    even = parse_filter("customer_id=even")
    first, cursor = store.page(0, 2, lambda o: matches(even, o))
    assert [o.order_id for o in first] == ["o0", "o2"]
    assert cursor is not None
    store.add("r5", orders_pb2.Order(order_id="o5", customer_id="even"))  # created while paging
    second, cursor = store.page(cursor, 2, lambda o: matches(even, o))
    assert ([o.order_id for o in second], cursor) == (["o4", "o5"], None)


def test_the_same_request_keeps_its_first_order() -> None:
    store = OrderStore()
    first = store.add("r", orders_pb2.Order(order_id="o1"))
    assert store.add("r", orders_pb2.Order(order_id="o2")) is first
    assert store.for_request("r") is first
