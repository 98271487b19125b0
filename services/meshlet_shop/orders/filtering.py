"""ListOrders filters, pure: ``field=value`` terms joined by ``AND`` (``state=PAID AND customer_id=c-1``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

FIELDS: Mapping[str, Callable[[Any], str]] = {
    "customer_id": lambda order: str(order.customer_id),
    "state": lambda order: str(order.state),
}


class FilterError(ValueError):
    pass


def parse_filter(text: str) -> dict[str, str]:
    """The terms of `text` as field -> value; FilterError names the bad term and the allowed fields."""
    terms: dict[str, str] = {}
    allowed = ", ".join(sorted(FIELDS))
    for term in (t.strip() for t in text.replace(" and ", " AND ").split(" AND ")):
        if not term:
            continue
        name, eq, value = (part.strip() for part in term.partition("="))
        if not eq or not value:
            raise FilterError(f"term {term!r} is not field=value; e.g. state=PAID AND customer_id=c-1")
        if name not in FIELDS:
            raise FilterError(f"cannot filter on {name!r}: the allowed fields are {allowed}")
        terms[name] = value.strip("\"'")
    return terms


def matches(terms: Mapping[str, str], order: Any) -> bool:
    return all(FIELDS[name](order) == value for name, value in terms.items())
