"""What an SDK-mode service answers when a call to its upstream fails after the mesh's retries.

Decision: a transient upstream failure (UNAVAILABLE, RESOURCE_EXHAUSTED, UNKNOWN, DATA_LOSS) is not
passed on as is. Answering UNAVAILABLE would say "this service is down": the caller's mesh would count it against
a healthy instance's breaker and retry it again, multiplying the retries the mesh below already made (retry
at one layer only, as the Google SRE book advises). We answer ABORTED (gRPC: "retry at a higher level") with an
ErrorInfo (reason UPSTREAM_FAILED, the upstream, its code, and meshlet's own reason when it gave one), and a
message saying the request can be repeated safely with the same request_id. DEADLINE_EXCEEDED and CANCELLED stay
what they are: the deadline and the cancellation are the caller's own. Access problems (PERMISSION_DENIED,
UNAUTHENTICATED, UNIMPLEMENTED) are this service's misconfiguration, so INTERNAL, naming the upstream. An upstream's
INTERNAL is not transient either (a bug or a misconfiguration there, which a repeat will not cure, so "repeat later,
it is safe" would send clients into a loop): it is left to the caller like an application answer, and stays
INTERNAL (orders names the upstream; the gateway passes orders' INTERNAL on with its details).
Application answers (NOT_FOUND, FAILED_PRECONDITION, ...) are mapped by the caller, which knows what they mean.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.status import status_for, with_info

TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)
PASSED_ON = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
MISCONFIGURED = frozenset(
    {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED}
)


def _mesh_reason(error: grpc.aio.AioRpcError) -> str:
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a status whose details disagree with its code: ignore the details
        return ""
    for box in status.details if status is not None else ():
        if box.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            box.Unpack(info)
            return str(info.reason)
    return ""


def upstream_failure(error: grpc.aio.AioRpcError, upstream: str, doing: str) -> grpc.Status | None:
    """Our answer when `upstream` failed with a status that is about it, not about the request; None for an
    application answer the caller must map. `doing` names the work, e.g. "the order was not created"."""
    code = error.code()
    said = f"{upstream} answered {code.name}: {error.details()}"
    if code in PASSED_ON:
        return status_for(code, f"{doing}: {said}")
    metadata = {"upstream": upstream, "upstream_code": code.name}
    reason = _mesh_reason(error)
    if reason:
        metadata["mesh_reason"] = reason
    if code in TRANSIENT:
        return with_info(
            grpc.StatusCode.ABORTED,
            f"{doing}: {said} (after the mesh's retries); repeat the request later with the same request_id, "
            "it is safe",
            "UPSTREAM_FAILED",
            metadata,
        )
    if code in MISCONFIGURED:
        return with_info(
            grpc.StatusCode.INTERNAL,
            f"{doing}: {said}; the mesh does not let this service use {upstream}: an operator must fix its "
            "certificates or intentions",
            "UPSTREAM_REFUSED",
            metadata,
        )
    return None
