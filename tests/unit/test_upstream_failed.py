"""What a server answers for a handler whose own outbound call failed (meshlet.errors.upstream_failed): never the
downstream's status, which the caller's mesh would retry and count against a healthy server."""

from __future__ import annotations

import grpc
import pytest

from meshlet.errors import (
    BreakerOpen,
    DeadlineTooShort,
    ErrorReason,
    IntentionDenied,
    NoHealthyEndpoint,
    error_info,
    upstream_failed,
)


def wire(
    code: grpc.StatusCode, details: str = "it broke", trailers: tuple[tuple[str, bytes], ...] = ()
) -> grpc.aio.AioRpcError:
    """A status off the wire, as a handler's outbound call raises it."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details)


@pytest.mark.parametrize("refusal", [NoHealthyEndpoint, BreakerOpen])
def test_a_refusal_of_the_mesh_is_aborted_keeping_its_reason_and_upstream(refusal: type[NoHealthyEndpoint]) -> None:
    answer = upstream_failed(refusal("no ledger", metadata={"upstream": "ledger"}))

    assert answer is not None
    assert answer.code() is grpc.StatusCode.ABORTED
    info = error_info(answer)
    assert info is not None
    assert (info.reason, info.metadata["upstream"], info.metadata["upstream_reason"]) == (
        ErrorReason.UPSTREAM_FAILED,
        "ledger",
        refusal.reason,
    )
    assert "ledger" in (answer.details() or "")


def test_the_callers_own_deadline_passes_on_as_it_is() -> None:
    assert upstream_failed(DeadlineTooShort("too late", metadata={"upstream": "ledger"})) is None
    assert upstream_failed(wire(grpc.StatusCode.DEADLINE_EXCEEDED), time_left_s=0.001) is None
    assert upstream_failed(wire(grpc.StatusCode.CANCELLED)) is None


@pytest.mark.parametrize("time_left_s", [4.8, None])
def test_a_timeout_the_handler_chose_is_the_upstreams_failure_not_the_callers_deadline(
    time_left_s: float | None,
) -> None:
    """The handler gave its call 200 ms of the caller's 5 s (or the caller set no deadline at all): passed on as
    DEADLINE_EXCEEDED, it would count against this healthy server's breaker."""
    answer = upstream_failed(wire(grpc.StatusCode.DEADLINE_EXCEEDED), time_left_s)

    assert answer is not None
    assert answer.code() is grpc.StatusCode.ABORTED
    info = error_info(answer)
    assert info is not None
    assert (info.reason, info.metadata["upstream_code"]) == (ErrorReason.UPSTREAM_FAILED, "DEADLINE_EXCEEDED")


def test_a_failure_a_repeat_will_not_cure_is_unknown_not_a_server_fault() -> None:
    """UNKNOWN, as grpc answers an unhandled error; INTERNAL or PERMISSION_DENIED would count against the
    server's breaker (INTERNAL) or blame the caller (PERMISSION_DENIED)."""
    for error in (wire(grpc.StatusCode.INTERNAL), IntentionDenied("no", metadata={"upstream": "ledger"})):
        answer = upstream_failed(error)
        assert answer is not None
        assert answer.code() is grpc.StatusCode.UNKNOWN


def test_an_upstream_failed_from_further_down_keeps_its_code_and_what_it_said() -> None:
    below = upstream_failed(NoHealthyEndpoint("no ledger", metadata={"upstream": "ledger"}))
    assert below is not None
    relayed = wire(below.code(), below.details() or "", tuple(below.trailing_metadata()))

    answer = upstream_failed(relayed)

    assert answer is not None
    assert answer.code() is grpc.StatusCode.ABORTED
    info = error_info(answer)
    assert info is not None
    assert (info.metadata["upstream"], info.metadata["upstream_reason"]) == ("ledger", "NO_HEALTHY_ENDPOINT")
