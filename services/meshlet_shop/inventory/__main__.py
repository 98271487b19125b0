"""``python -m meshlet_shop.inventory``: the inventory app (plain grpcio; run it behind ``meshlet-sidecar``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

import grpc

from meshlet_shop.catalog import PRODUCTS
from meshlet_shop.inventory.servicer import Inventory
from meshlet_shop.inventory.stock import Stock
from meshlet_shop.plain import configure_logging, parse_options, run_app, serve_plain
from meshlet_shop_api.inventory.v1 import inventory_pb2, inventory_pb2_grpc

DESCRIPTION = (
    "Stock levels and reservations (shop.inventory.v1.Inventory), a plain grpcio app with no meshlet inside: "
    "run it behind a meshlet-sidecar, which registers it in Consul and gives it mTLS."
)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options("inventory", DESCRIPTION, argv)
    configure_logging()
    injector = options.injector()
    stock = Stock.seeded({sku: product.initial_stock for sku, product in PRODUCTS.items()})

    def register(server: grpc.aio.Server) -> list[str]:
        inventory_pb2_grpc.add_InventoryServicer_to_server(Inventory(stock, injector, options.instance_id), server)
        return [inventory_pb2.DESCRIPTOR.services_by_name["Inventory"].full_name]

    return run_app(serve_plain(options, injector, register))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
