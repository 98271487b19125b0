"""``python -m meshlet_shop.inventory``: the inventory app (plain grpcio; run it behind ``meshlet-sidecar``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

import grpc

from meshlet_shop.catalog import PRODUCTS
from meshlet_shop.inventory import servicer_v2
from meshlet_shop.inventory.servicer import Inventory
from meshlet_shop.inventory.stock import open_storage
from meshlet_shop.plain import Options, configure_logging, parse_options, run_app, serve_plain
from meshlet_shop.shared_store import StoreSetupError, StoreUnavailable
from meshlet_shop_api.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshlet_shop_api.inventory.v2 import inventory_pb2 as inventory_v2_pb2
from meshlet_shop_api.inventory.v2 import inventory_pb2_grpc as inventory_v2_pb2_grpc

DESCRIPTION = (
    "Stock levels and reservations (shop.inventory.v2.Inventory, and the deprecated v1 beside it), a plain grpcio "
    "app with no meshlet inside: run it behind a meshlet-sidecar, which registers it in Consul and gives it mTLS."
)
SEED_RETRY_S = 2.0

log = logging.getLogger("meshlet_shop.inventory")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options("inventory", DESCRIPTION, argv)
    configure_logging()
    return run_app(serve(options))


async def serve(options: Options) -> int:
    try:
        stock = open_storage(options.store)
    except StoreSetupError as error:
        print(f"python -m meshlet_shop.inventory: {error}", file=sys.stderr)
        return 2
    try:
        # A shared store may not be up yet (Redis starting beside the shop): wait for it rather than crash-loop.
        while True:
            try:
                await stock.seed({sku: product.initial_stock for sku, product in PRODUCTS.items()})
                break
            except StoreUnavailable as error:
                log.warning("waiting for the store (retrying every %gs): %s", SEED_RETRY_S, error)
                await asyncio.sleep(SEED_RETRY_S)
        log.info("stock kept in %s", stock.where)
        injector = options.injector()

        def register(server: grpc.aio.Server) -> list[str]:
            v1 = Inventory(stock, injector, options.instance_id)
            inventory_pb2_grpc.add_InventoryServicer_to_server(v1, server)
            inventory_v2_pb2_grpc.add_InventoryServicer_to_server(servicer_v2.Inventory(v1), server)
            return [
                inventory_pb2.DESCRIPTOR.services_by_name["Inventory"].full_name,  # deprecated, still served
                inventory_v2_pb2.DESCRIPTOR.services_by_name["Inventory"].full_name,
            ]

        return await serve_plain(options, injector, register)
    finally:
        await stock.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
