"""Errors meshlet itself produces, and the only place that turns them into gRPC statuses.

::

    grpc.RpcError
     └─ grpc.aio.AioRpcError
         └─ MeshError                  meshlet refused or gave up on a call; carries google.rpc.ErrorInfo
             ├─ NoHealthyEndpoint      UNAVAILABLE          no passing instance, or discovery has no answer yet
             ├─ BreakerOpen            UNAVAILABLE          every endpoint's circuit is open
             ├─ BudgetExhausted        (last attempt's code) the retry budget refused another attempt
             ├─ DeadlineTooShort       DEADLINE_EXCEEDED    too little time left to start an attempt
             ├─ BulkheadFull           RESOURCE_EXHAUSTED   too many calls in flight to this upstream
             ├─ RateLimited            RESOURCE_EXHAUSTED   the caller is over its rate limit (with pushback)
             ├─ IntentionDenied        PERMISSION_DENIED    an intention denies caller -> target
             ├─ Unauthenticated        UNAUTHENTICATED      no or an unverifiable client certificate
             └─ MethodPathInvalid      UNIMPLEMENTED        the call's path is not exactly /<service>/<method>
    ConfigError (ValueError)           a bad configuration: exit 2 with the field, the value and the fix

A MeshError is an ``AioRpcError`` so callers handle it as any failed call (``e.code()``, ``e.details()``),
and its trailing metadata holds ``grpc-status-details-bin``, so ``grpc_status.rpc_status.from_call(e)``
yields the ErrorInfo (domain ``meshlet.dev``) whose reason and metadata say why.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc.aio import Metadata

DOMAIN = "meshlet.dev"
DETAILS_KEY = "grpc-status-details-bin"
PUSHBACK_KEY = "grpc-retry-pushback-ms"


class ErrorReason(enum.StrEnum):
    """Why meshlet failed a call: ErrorInfo.reason, span events and metric labels use these names."""

    NO_HEALTHY_ENDPOINT = "NO_HEALTHY_ENDPOINT"
    BREAKER_OPEN = "BREAKER_OPEN"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    DEADLINE_TOO_SHORT = "DEADLINE_TOO_SHORT"
    BULKHEAD_FULL = "BULKHEAD_FULL"
    RATE_LIMITED = "RATE_LIMITED"
    INTENTION_DENIED = "INTENTION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    METHOD_PATH_INVALID = "METHOD_PATH_INVALID"


class MeshError(grpc.aio.AioRpcError):
    """A call meshlet refused or gave up on. Subclasses fix the code and the reason."""

    code_: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: ErrorReason

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        code: grpc.StatusCode | None = None,
        pushback_ms: int | None = None,
    ) -> None:
        self.info = dict(metadata or {})
        status_code = code or self.code_
        trailers = status_trailers(status_code, message, self.reason, self.info)
        if pushback_ms is not None:
            trailers = Metadata(*trailers, (PUSHBACK_KEY, str(max(0, pushback_ms))))
        super().__init__(status_code, Metadata(), trailers, message, None)

    def __str__(self) -> str:
        return f"{self.code().name}: {self.details()}"


class NoHealthyEndpoint(MeshError):
    code_ = grpc.StatusCode.UNAVAILABLE
    reason = ErrorReason.NO_HEALTHY_ENDPOINT


class BreakerOpen(MeshError):
    code_ = grpc.StatusCode.UNAVAILABLE
    reason = ErrorReason.BREAKER_OPEN


class BudgetExhausted(MeshError):
    code_ = grpc.StatusCode.UNAVAILABLE
    reason = ErrorReason.BUDGET_EXHAUSTED


class DeadlineTooShort(MeshError):
    code_ = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = ErrorReason.DEADLINE_TOO_SHORT


class BulkheadFull(MeshError):
    code_ = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = ErrorReason.BULKHEAD_FULL


class RateLimited(MeshError):
    code_ = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = ErrorReason.RATE_LIMITED


class IntentionDenied(MeshError):
    code_ = grpc.StatusCode.PERMISSION_DENIED
    reason = ErrorReason.INTENTION_DENIED


class Unauthenticated(MeshError):
    code_ = grpc.StatusCode.UNAUTHENTICATED
    reason = ErrorReason.UNAUTHENTICATED


class MethodPathInvalid(MeshError):
    """UNIMPLEMENTED, as a gRPC server answers a path that names no method: a caller must not retry it."""

    code_ = grpc.StatusCode.UNIMPLEMENTED
    reason = ErrorReason.METHOD_PATH_INVALID


def status_trailers(code: grpc.StatusCode, message: str, reason: ErrorReason, info: Mapping[str, str]) -> Metadata:
    """Trailing metadata carrying a google.rpc.Status whose one detail is meshlet's ErrorInfo."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason.value, domain=DOMAIN, metadata=dict(info)))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return Metadata((DETAILS_KEY, status.SerializeToString()))


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """meshlet's ErrorInfo from a failed call's trailers, if meshlet produced the failure."""
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.domain == DOMAIN:
                    return info
    return None


class ConfigError(ValueError):
    """An invalid configuration: which field, what value, what is allowed. The CLIs exit 2 with it."""

    def __init__(self, path: str, value: object, allowed: str, *, source: str | None = None) -> None:
        self.path = path
        self.value = value
        self.allowed = allowed
        self.source = source  # the file, environment variable or flag the value came from
        origin = f" (from {source})" if source else ""
        super().__init__(f"invalid config: {path} = {value!r}{origin}: {allowed}")
