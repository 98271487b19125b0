"""``python -m meshlet_shop.orders``: the orders service in SDK mode (meshlet inside, no sidecar)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc

from meshlet import Mesh
from meshlet_shop.faults import FaultInjector
from meshlet_shop.orders.servicer import Orders
from meshlet_shop.plain import parse_options
from meshlet_shop.sdk import run
from meshlet_shop_api.orders.v1 import orders_pb2_grpc

DESCRIPTION = (
    "Orders (shop.orders.v1.Orders): validates an order, reserves it in inventory and charges it in payments "
    "through meshlet's SDK (Mesh.from_env: MESHLET_CONFIG, MESHLET_* variables, CONSUL_HTTP_ADDR), and lists "
    "orders page by page. Registers itself in Consul as service 'orders'."
)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options("orders", DESCRIPTION, argv)

    def register(mesh: Mesh, server: grpc.aio.Server, faults: FaultInjector) -> None:
        orders_pb2_grpc.add_OrdersServicer_to_server(Orders(mesh.channel, faults), server)

    return run(options, register)


if __name__ == "__main__":
    sys.exit(main())
