"""One error shape for every failure the edge answers: the JSON form of ``google.rpc.Status`` with the HTTP status
of the standard gRPC -> HTTP mapping (as grpc-gateway maps it). The upstream's own Status (with meshlet's
ErrorInfo when the mesh refused or gave up) is passed through; the edge's own refusals are built here. Pure."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2, descriptor_pool, json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from meshlet.errors import DETAILS_KEY

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The call's google.rpc.Status: the one in its trailers (``grpc-status-details-bin``) when the server or the
    mesh sent one, else one made of its code and message."""
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except DecodeError:  # a malformed trailer is the server's bug; its code and message still stand
                break
            status.code = error.code().value[0]  # the status line is what the call ended with
            status.message = error.details() or status.message
            return status
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def refusal(code: grpc.StatusCode, message: str, violations: Iterable[tuple[str, str]] = ()) -> status_pb2.Status:
    """The edge's own refusal, with a BadRequest naming each offending field when there are some."""
    status = status_pb2.Status(code=code.value[0], message=message)
    found = [error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
    if found:
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=found))
    return status


def status_json(status: status_pb2.Status, pool: descriptor_pool.DescriptorPool | None = None) -> str:
    """The proto3 JSON of `status`, always with ``code``, ``message`` and ``details``. Each detail is written by its
    type from this process's pool (google.rpc's, meshlet's) or else from `pool` (the descriptor sets' types, which an
    upstream may attach); one that neither names keeps its ``@type`` and its bytes (``value``, base64), rather than
    being lost or failing the answer."""
    details = [_detail(detail, pool) for detail in status.details]
    return json.dumps({"code": status.code, "message": status.message, "details": details})


def _detail(detail: any_pb2.Any, pool: descriptor_pool.DescriptorPool | None) -> dict[str, Any]:
    for candidate in (None, pool) if pool is not None else (None,):  # None: this process's default pool
        try:
            written: dict[str, Any] = json_format.MessageToDict(detail, descriptor_pool=candidate)
            return written
        except (TypeError, KeyError):  # an Any whose type that pool cannot name
            continue
        except DecodeError:  # bytes that are not that type: the server's bug, passed on as they came
            break
    return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}
