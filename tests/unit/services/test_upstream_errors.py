"""What orders and the gateway answer when an upstream fails: transient failures become ABORTED ("repeat the
request"), an upstream's INTERNAL does not (repeating will not cure a bug or a misconfiguration)."""

from __future__ import annotations

import grpc
import pytest

from services.gateway.servicer import _answer
from services.upstream_errors import upstream_failure


def failed(code: grpc.StatusCode, details: str = "it broke") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_a_transient_failure_is_aborted_and_safe_to_repeat(code: grpc.StatusCode) -> None:
    status = upstream_failure(failed(code), "inventory", "the order was not created")
    assert status is not None
    assert status.code is grpc.StatusCode.ABORTED
    assert "it is safe" in status.details


def test_an_upstream_internal_is_not_called_transient() -> None:
    assert upstream_failure(failed(grpc.StatusCode.INTERNAL), "inventory", "not created") is None


def test_the_gateway_passes_orders_internal_on() -> None:
    status = _answer(failed(grpc.StatusCode.INTERNAL, "orders is misconfigured"))
    assert status.code is grpc.StatusCode.INTERNAL
    assert "orders is misconfigured" in status.details
