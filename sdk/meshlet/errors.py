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
             ├─ TokenInvalid           UNAUTHENTICATED      inbound.jwt: no bearer JWT, or one that does not verify
             ├─ TokenInsufficient      PERMISSION_DENIED    inbound.jwt: a verified JWT lacks a scope or a claim
             ├─ MethodPathInvalid      UNIMPLEMENTED        the call's path is not exactly /<service>/<method>
             ├─ RequestInvalid         INVALID_ARGUMENT     the request breaks its proto's buf.validate rules
             │                                              (a google.rpc.BadRequest beside the ErrorInfo)
             ├─ ChannelClosed          UNAVAILABLE          the mesh closed the channel a call was running on
             └─ UpstreamFailed         ABORTED or UNKNOWN   a server's handler (or app) failed because its own
                                                            upstream call did: see `upstream_failed`
         └─ explained_failure(...)     a transport failure meshlet explained, e.g. TLS_HANDSHAKE_FAILED
                                       (UNAVAILABLE): not a MeshError, so it is retried as the bare one was
    ConfigError (ValueError)           a bad configuration: exit 2 with the field, the value and the fix
    CannotListen (SystemExit)          a listener cannot bind its port: exit 1 with one line naming it

A MeshError is an ``AioRpcError`` so callers handle it as any failed call (``e.code()``, ``e.details()``),
and its trailing metadata holds ``grpc-status-details-bin``, so ``grpc_status.rpc_status.from_call(e)``
yields the ErrorInfo (domain ``meshlet.dev``) whose reason and metadata say why.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message as ProtoMessage
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
    CHANNEL_CLOSED = "CHANNEL_CLOSED"
    UPSTREAM_FAILED = "UPSTREAM_FAILED"
    TLS_HANDSHAKE_FAILED = "TLS_HANDSHAKE_FAILED"
    REQUEST_INVALID = "REQUEST_INVALID"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_INSUFFICIENT = "TOKEN_INSUFFICIENT"


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
        details: Sequence[ProtoMessage] = (),
    ) -> None:
        self.info = dict(metadata or {})
        status_code = code or self.code_
        trailers = status_trailers(status_code, message, self.reason, self.info, details)
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


class TokenInvalid(MeshError):
    """``inbound.jwt``: the call carries no ``authorization: Bearer <JWT>``, or one that does not verify."""

    code_ = grpc.StatusCode.UNAUTHENTICATED
    reason = ErrorReason.TOKEN_INVALID


class TokenInsufficient(MeshError):
    """``inbound.jwt``: the token verified but lacks a scope or claim the method's rule requires."""

    code_ = grpc.StatusCode.PERMISSION_DENIED
    reason = ErrorReason.TOKEN_INSUFFICIENT


class MethodPathInvalid(MeshError):
    """UNIMPLEMENTED, as a gRPC server answers a path that names no method: a caller must not retry it."""

    code_ = grpc.StatusCode.UNIMPLEMENTED
    reason = ErrorReason.METHOD_PATH_INVALID


class RequestInvalid(MeshError):
    """A request that breaks its proto's buf.validate constraints: the google.rpc.BadRequest beside the ErrorInfo
    names each field, the rule's id and why. Resending it as it is gets the same answer."""

    code_ = grpc.StatusCode.INVALID_ARGUMENT
    reason = ErrorReason.REQUEST_INVALID

    def __init__(self, message: str, bad_request: error_details_pb2.BadRequest, *, method: str = "") -> None:
        info = {"violations": str(len(bad_request.field_violations))} | ({"method": method} if method else {})
        super().__init__(message, metadata=info, details=(bad_request,))
        self.bad_request = bad_request


class ChannelClosed(MeshError):
    code_ = grpc.StatusCode.UNAVAILABLE
    reason = ErrorReason.CHANNEL_CLOSED


class UpstreamFailed(MeshError):
    code_ = grpc.StatusCode.ABORTED
    reason = ErrorReason.UPSTREAM_FAILED


# An upstream failure that a repeat may cure: the server answers ABORTED ("retry at a higher level"). A
# DEADLINE_EXCEEDED gets here only when it was not the caller's deadline that ran out (see CALLERS_DEADLINE_S).
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
CALLERS_DEADLINE_S = 0.05
"""A handler's call that ran out of time while the caller's own call had no more than this left ran out of the
caller's deadline (its outbound calls inherit it): passed on as DEADLINE_EXCEEDED. With more left, the time that
ran out was one the handler chose (a timeout of its own for that call), and the server answers UPSTREAM_FAILED:
a bare DEADLINE_EXCEEDED, with the caller's deadline far off, would count against this healthy server."""


def upstream_failed(error: grpc.aio.AioRpcError, time_left_s: float | None = 0.0) -> UpstreamFailed | None:
    """What a server answers for a call whose handler failed because a call it made failed: None when the
    failure is the caller's own deadline or cancellation (pass it on as it is). `time_left_s` is what is left of
    the caller's deadline (None: it set none), which says whose a DEADLINE_EXCEEDED is (CALLERS_DEADLINE_S).

    Passed on as it is, a downstream's UNAVAILABLE (NoHealthyEndpoint, BreakerOpen, BudgetExhausted...) would
    say "this server is down": the caller's mesh would retry a healthy instance, multiplying the retries made
    below it, and count it against that instance's breaker. So the server answers ABORTED (gRPC: retry at a
    higher level) for a failure a repeat may cure (UNAVAILABLE, RESOURCE_EXHAUSTED, UNKNOWN, DATA_LOSS: every
    refusal of the mesh but an intention's; a DEADLINE_EXCEEDED not the caller's), else UNKNOWN (what grpc
    answers for an unhandled error); a meshlet caller never retries UPSTREAM_FAILED and neither code counts
    against a breaker. The ErrorInfo keeps the upstream, its code and meshlet's reason, when there was one.
    """
    code = error.code()
    if code is grpc.StatusCode.CANCELLED:
        return None
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and time_left_s is not None and time_left_s <= CALLERS_DEADLINE_S:
        return None
    info = error_info(error)
    relayed = info is not None and info.reason == ErrorReason.UPSTREAM_FAILED  # said by the server below
    if relayed:
        assert info is not None
        metadata = dict(info.metadata)
    else:
        metadata = {"upstream_code": code.name}
        if info is not None:
            metadata["upstream_reason"] = info.reason
            if "upstream" in info.metadata:
                metadata["upstream"] = info.metadata["upstream"]
    upstream = metadata.get("upstream", "an upstream")
    said = f"{upstream} failed ({code.name}: {error.details()})"
    if code in TRANSIENT or (relayed and code is grpc.StatusCode.ABORTED):
        return UpstreamFailed(
            f"{said}, after the mesh's retries: repeat the request later, if it is safe to", metadata=metadata
        )
    return UpstreamFailed(
        f"the handler did not handle a failed call: {said}", metadata=metadata, code=grpc.StatusCode.UNKNOWN
    )


def explained_failure(
    failed: grpc.aio.AioRpcError, message: str, reason: ErrorReason, info: Mapping[str, str]
) -> grpc.aio.AioRpcError:
    """`failed` (a transport failure grpc reports in its own words) with meshlet's `message` and ErrorInfo: the
    same code, so the retry stage and the breakers treat it exactly as they would have treated `failed`."""
    code = failed.code()
    return grpc.aio.AioRpcError(
        code, Metadata(), status_trailers(code, message, reason, info), message, failed.debug_error_string()
    )


def status_trailers(
    code: grpc.StatusCode,
    message: str,
    reason: ErrorReason,
    info: Mapping[str, str],
    details: Sequence[ProtoMessage] = (),
) -> Metadata:
    """Trailing metadata carrying a google.rpc.Status whose first detail is meshlet's ErrorInfo, then `details`."""
    packed = []
    for detail in (error_details_pb2.ErrorInfo(reason=reason.value, domain=DOMAIN, metadata=dict(info)), *details):
        packed.append(any_pb2.Any())
        packed[-1].Pack(detail)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
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


class CannotListen(SystemExit):
    """A meshlet listener cannot bind its address: the port is taken (meshlet never shares one, SO_REUSEPORT is
    off) or the address is not this host's. A SystemExit, so that uncaught it ends the process with exit 1 and
    this one line, never a traceback, as the CLIs do; catch it to do otherwise."""

    def __init__(self, message: str, *, address: str) -> None:
        super().__init__(message)
        self.address = address


def describe_os_error(error: OSError) -> str:
    """A bind's OSError in the kernel's words, saying who is at fault when the port is taken."""
    reason = os.strerror(error.errno) if error.errno else str(error)  # asyncio words its own strerror
    return f"{reason}: another process holds the port" if error.errno == errno.EADDRINUSE else reason
