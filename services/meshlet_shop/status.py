"""Errors the shop returns, with google.rpc details a client can read (``grpc_status.rpc_status.from_call``):
BadRequest field violations for bad input, ErrorInfo for the rest. No meshlet import (the plain apps use it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "shop.meshlet.dev"

Violation = tuple[str, str]  # (field path, what is wrong and what to send instead)


def status_for(code: grpc.StatusCode, message: str, *details: Any) -> grpc.Status:
    """A grpc.Status carrying `details` (google.rpc messages) in ``grpc-status-details-bin``."""
    packed = []
    for detail in details:
        box = any_pb2.Any()
        box.Pack(detail)
        packed.append(box)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=packed))


async def abort(context: grpc.aio.ServicerContext, status: grpc.Status) -> NoReturn:
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: context.abort raises")  # for type checkers


def bad_request(message: str, violations: Sequence[Violation]) -> grpc.Status:
    """INVALID_ARGUMENT with one BadRequest field violation per bad field."""
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )
    return status_for(grpc.StatusCode.INVALID_ARGUMENT, message, detail)


def with_info(code: grpc.StatusCode, message: str, reason: str, metadata: Mapping[str, str]) -> grpc.Status:
    """`code` with an ErrorInfo (domain shop.meshlet.dev) saying why, for clients that branch on the reason."""
    return status_for(code, message, error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))


def field_violations(status: status_pb2.Status | None) -> list[Violation]:
    """The BadRequest field violations in a rich status (empty when it has none)."""
    found: list[Violation] = []
    for box in status.details if status is not None else ():
        if box.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            detail = error_details_pb2.BadRequest()
            box.Unpack(detail)
            found.extend((v.field, v.description) for v in detail.field_violations)
    return found


# What the shop's SDK services leave to the mesh when a call they make fails: a failure a repeat may cure (the
# mesh's NoHealthyEndpoint, BreakerOpen, BudgetExhausted..., or an upstream's own UNAVAILABLE), and the caller's
# own deadline or cancellation. Let escape from the handler, the mesh's server answers them as UPSTREAM_FAILED
# (ABORTED, with the upstream and its code in an ErrorInfo), which no meshlet caller retries or counts against
# this instance, or as the caller's own deadline. Any other code is an application answer the service maps.
LEFT_TO_THE_MESH = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
