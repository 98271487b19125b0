"""The Payments gRPC API over a `ChargeBook` (Consul KV or memory): input checks, faults, statuses that say what
to do."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from meshlet_shop.faults import FaultInjector
from meshlet_shop.payments.consul_ledger import ChargeBook, LedgerUnavailable
from meshlet_shop.payments.idempotency import KeyReused
from meshlet_shop.status import Violation, abort, bad_request, with_info
from meshlet_shop_api.payments.v1 import payments_pb2, payments_pb2_grpc

log = logging.getLogger("meshlet_shop.payments")
CURRENCIES = ("EUR", "USD", "GBP")


class Payments(payments_pb2_grpc.PaymentsServicer):
    def __init__(self, ledger: ChargeBook, faults: FaultInjector) -> None:
        self.ledger = ledger
        self.faults = faults

    async def Charge(self, request: payments_pb2.ChargeRequest, context: Any) -> payments_pb2.ChargeReply:  # noqa: N802
        await self.faults.apply(context, "Charge")
        violations: list[Violation] = []
        if not request.idempotency_key:
            violations.append(("idempotency_key", "required: a key per payment, so that a retried charge is made once"))
        if not request.order_id:
            violations.append(("order_id", "required: the order this charge pays"))
        if request.amount_cents <= 0:
            violations.append(("amount_cents", f"must be above 0, got {request.amount_cents}"))
        currency = request.currency or "EUR"
        if currency not in CURRENCIES:
            violations.append(("currency", f"must be one of {', '.join(CURRENCIES)}, got {request.currency!r}"))
        if violations:
            await abort(context, bad_request("Charge: invalid request, see the field violations", violations))
        try:
            charge, replayed = await self.ledger.charge(
                request.idempotency_key, request.order_id, request.amount_cents, currency
            )
        except LedgerUnavailable as error:
            await abort(
                context,
                with_info(
                    grpc.StatusCode.UNAVAILABLE,
                    f"Charge: nothing was charged: {error}; repeat the call with the same idempotency_key",
                    "LEDGER_UNAVAILABLE",
                    {"ledger": self.ledger.where},
                ),
            )
        except KeyReused as error:
            earlier = error.earlier
            await abort(
                context,
                with_info(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"idempotency key {earlier.idempotency_key!r} already charged {earlier.amount_cents} "
                    f"{earlier.currency} for order {earlier.order_id!r} ({earlier.charge_id}): a new payment "
                    "needs a new key; a retry must send the same order and amount",
                    "IDEMPOTENCY_KEY_REUSED",
                    {"charge_id": earlier.charge_id, "order_id": earlier.order_id},
                ),
            )
        log.info(
            "charge replayed" if replayed else "charged",
            extra={"charge_id": charge.charge_id, "order_id": charge.order_id, "amount_cents": charge.amount_cents},
        )
        return payments_pb2.ChargeReply(charge_id=charge.charge_id, replayed=replayed)
