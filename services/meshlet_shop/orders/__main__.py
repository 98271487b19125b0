"""``python -m meshlet_shop.orders``: the orders service in SDK mode (meshlet inside, no sidecar)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import grpc

from meshlet import Mesh
from meshlet_shop.faults import FaultInjector
from meshlet_shop.orders.servicer import Orders
from meshlet_shop.orders.store import open_storage
from meshlet_shop.plain import parse_options
from meshlet_shop.sdk import run
from meshlet_shop.shared_store import StoreSetupError
from meshlet_shop_api.orders.v1 import orders_pb2_grpc

DESCRIPTION = (
    "Orders (shop.orders.v1.Orders): validates an order, reserves it in inventory and charges it in payments "
    "through meshlet's SDK (Mesh.from_env: MESHLET_CONFIG, MESHLET_* variables, CONSUL_HTTP_ADDR), and lists "
    "orders page by page. Registers itself in Consul as service 'orders'."
)

log = logging.getLogger("meshlet_shop.orders")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options("orders", DESCRIPTION, argv)
    try:
        store = open_storage(options.store)
    except StoreSetupError as error:
        print(f"python -m meshlet_shop.orders: {error}", file=sys.stderr)
        return 2

    def register(mesh: Mesh, server: grpc.aio.Server, faults: FaultInjector) -> None:
        log.info("orders kept in %s", store.where)
        orders_pb2_grpc.add_OrdersServicer_to_server(Orders(mesh.channel, faults, store=store), server)

    return run(options, register, store.close)


if __name__ == "__main__":
    sys.exit(main())
