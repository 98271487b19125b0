"""``python -m meshlet_shop.payments``: the payments app (plain grpcio; run it behind ``meshlet-sidecar``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

import grpc

from meshlet_shop.payments.consul_ledger import from_environment
from meshlet_shop.payments.servicer import Payments
from meshlet_shop.plain import Options, configure_logging, parse_options, run_app, serve_plain
from meshlet_shop_api.payments.v1 import payments_pb2, payments_pb2_grpc

DESCRIPTION = (
    "Charges with idempotency keys (shop.payments.v1.Payments): a retried charge is charged once. A plain "
    "grpcio app with no meshlet inside: run it behind a meshlet-sidecar."
)


log = logging.getLogger("meshlet_shop.payments")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options("payments", DESCRIPTION, argv)
    configure_logging()
    return run_app(serve(options))


async def serve(options: Options) -> int:
    try:
        ledger = from_environment(os.environ, options.instance_id)
    except ValueError as error:
        print(f"python -m meshlet_shop.payments: {error}", file=sys.stderr)
        return 2
    if os.environ.get("CONSUL_HTTP_ADDR"):
        log.info("idempotency records in Consul KV at %s, shared by every payments instance", ledger.where)
    else:
        log.warning(
            "idempotency records in memory: CONSUL_HTTP_ADDR is not set, so a charge the mesh re-sends to another "
            "payments instance is charged again there; run one instance, or set CONSUL_HTTP_ADDR"
        )
    injector = options.injector()

    def register(server: grpc.aio.Server) -> list[str]:
        payments_pb2_grpc.add_PaymentsServicer_to_server(Payments(ledger, injector), server)
        return [payments_pb2.DESCRIPTOR.services_by_name["Payments"].full_name]

    retention = asyncio.create_task(ledger.sweep_forever(), name="ledger retention")
    try:
        return await serve_plain(options, injector, register)
    finally:
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention
        await ledger.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
