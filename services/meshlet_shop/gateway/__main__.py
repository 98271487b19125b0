"""``python -m meshlet_shop.gateway``: the shop's entry point in SDK mode (meshlet inside, no sidecar)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc

from meshlet import Mesh
from meshlet_shop.faults import FaultInjector
from meshlet_shop.gateway.servicer import Gateway
from meshlet_shop.plain import parse_options
from meshlet_shop.sdk import run
from meshlet_shop_api.gateway.v1 import gateway_pb2_grpc

DESCRIPTION = (
    "The shop's entry point (shop.gateway.v1.Gateway): Checkout creates an order through orders, found and "
    "called through meshlet's SDK (Mesh.from_env: MESHLET_CONFIG, MESHLET_* variables, CONSUL_HTTP_ADDR). "
    "Registers itself in Consul as service 'gateway'."
)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options("gateway", DESCRIPTION, argv)

    def register(mesh: Mesh, server: grpc.aio.Server, faults: FaultInjector) -> None:
        gateway_pb2_grpc.add_GatewayServicer_to_server(Gateway(mesh.channel, faults), server)

    return run(options, register)


if __name__ == "__main__":
    sys.exit(main())
