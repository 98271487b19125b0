"""The shop's catalog: the SKUs inventory stocks at start and the prices orders charges. One table, so the two
services agree; a real shop would have a catalog service."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price_cents: int
    initial_stock: int


CURRENCY = "EUR"
PRODUCTS = {
    product.sku: product
    for product in (
        Product("sku-tea", "green tea, 100 g", 650, 1_000_000),
        Product("sku-coffee", "coffee beans, 250 g", 990, 1_000_000),
        Product("sku-mug", "mug", 1200, 1_000_000),
        Product("sku-kettle", "kettle", 4500, 1_000),
        Product("sku-teapot", "cast iron teapot", 7900, 3),  # scarce, to show FAILED_PRECONDITION
    )
}
