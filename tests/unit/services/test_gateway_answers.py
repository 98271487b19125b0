"""What the gateway answers when orders refuses a checkout: orders' own answer, passed on."""

from __future__ import annotations

import grpc

from meshlet_shop.gateway.servicer import _answer


def failed(code: grpc.StatusCode, details: str = "it broke") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_the_gateway_passes_orders_internal_on() -> None:
    status = _answer(failed(grpc.StatusCode.INTERNAL, "orders is misconfigured"))
    assert status.code is grpc.StatusCode.INTERNAL
    assert "orders is misconfigured" in status.details
