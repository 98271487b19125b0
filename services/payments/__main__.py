"""``python -m services.payments``: the payments app (plain grpcio; run it behind ``meshlet-sidecar``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence

import grpc

from services.payments.idempotency import Ledger
from services.payments.servicer import Payments
from services.plain import configure_logging, parse_options, serve_plain
from shop.payments.v1 import payments_pb2, payments_pb2_grpc

DESCRIPTION = (
    "Charges with idempotency keys (shop.payments.v1.Payments): a retried charge is charged once. A plain "
    "grpcio app with no meshlet inside: run it behind a meshlet-sidecar."
)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options("payments", DESCRIPTION, argv)
    configure_logging()
    injector = options.injector()
    ledger = Ledger(prefix=f"ch-{options.instance_id}")

    def register(server: grpc.aio.Server) -> list[str]:
        payments_pb2_grpc.add_PaymentsServicer_to_server(Payments(ledger, injector), server)
        return [payments_pb2.DESCRIPTOR.services_by_name["Payments"].full_name]

    return asyncio.run(serve_plain(options, injector, register))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
