"""Retries as a caller and a server see them: where a retry goes, what it says, when it is not sent, how long
it waits, and what a spent retry budget answers."""

from __future__ import annotations

import grpc
import pytest

from meshlet.endpoints import Endpoint
from meshlet.errors import ErrorReason, MeshError, NoHealthyEndpoint, UpstreamFailed, error_info
from meshlet.events import RetryNotAttempted, RetryScheduled
from tests.pipeline.conftest import GET, RESERVE, SERVICE, A, B, C, D, E, MakeRig, Rig, info_of, policy
from tests.pipeline.scripted import HandshakesFail, failure, refused, reply_from, unavailable


def mesh_status(error: MeshError) -> Exception:
    """A meshlet server's answer as the caller's grpc reports it: a status off the wire, not a MeshError."""
    return failure(error.code(), error.details() or "", trailers=tuple(error.trailing_metadata()))


def always_unavailable(rig: Rig, *endpoints: Endpoint) -> None:
    for endpoint in endpoints or (A, B, C):
        rig.transport.always(endpoint, unavailable())


# ---------------------------------------------------------------- where retries go and what they carry


@pytest.mark.parametrize("seed", range(5))
async def test_a_retry_goes_to_another_endpoint_than_the_one_that_failed(make_rig: MakeRig, seed: int) -> None:
    rig = make_rig(seed=seed)
    rig.serve(A, B, C)
    always_unavailable(rig)

    await rig.failing(GET)

    assert len(rig.attempts) == 3
    assert len({attempt.endpoint for attempt in rig.attempts}) == 3


async def test_a_call_whose_first_attempt_fails_succeeds_on_the_retry(rig: Rig) -> None:
    rig.transport.then(unavailable())

    reply = await rig.unary(GET)

    first, second = rig.attempts
    assert second.endpoint != first.endpoint
    assert reply == reply_from(second.endpoint)
    assert rig.events_of(RetryScheduled) == [RetryScheduled(SERVICE, GET, 1, rig.sleeps[0], "UNAVAILABLE")]


async def test_retries_tell_the_server_how_many_attempts_came_before(rig: Rig) -> None:
    always_unavailable(rig)

    await rig.failing(GET, metadata=(("x-request-id", "r-1"),))

    assert [a.header("grpc-previous-rpc-attempts") for a in rig.attempts] == [None, "1", "2"]
    assert [a.header("x-request-id") for a in rig.attempts] == ["r-1"] * 3


async def test_max_attempts_above_five_is_treated_as_five(make_rig: MakeRig) -> None:
    """gRPC A6: "maxAttempts values greater than 5 are treated as 5" (config refuses them; code clamps too)."""
    base = policy()
    ten = base.model_copy(update={"retry": base.retry.model_copy(update={"max_attempts": 10})})
    rig = make_rig(upstream_policy=ten)
    rig.serve(A, B, C, D, E)
    always_unavailable(rig, A, B, C, D, E)

    error = await rig.failing(GET)

    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert len(rig.attempts) == 5
    assert [event.attempt for event in rig.events_of(RetryScheduled)] == [1, 2, 3, 4]


# ---------------------------------------------------------------- what is never retried


async def test_invalid_argument_is_never_retried_and_never_counts_against_the_breaker(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.serve(A)
    rig.transport.always(A, failure(grpc.StatusCode.INVALID_ARGUMENT, "quantity must be positive"))

    for _ in range(12):
        error = await rig.failing(GET)
        assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "quantity must be positive")

    assert len(rig.attempts) == 12
    assert rig.sleeps == []
    assert rig.events_of(RetryScheduled) == []
    assert "breakers: 1 closed" in repr(rig.upstream)


async def test_codes_listed_in_retry_on_are_retried(make_rig: MakeRig) -> None:
    rig = make_rig(retry={"on": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]})
    rig.serve(A, B)
    rig.transport.then(failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy"))

    assert await rig.unary(GET) == reply_from(rig.attempts[-1].endpoint)
    assert len(rig.attempts) == 2


async def test_a_non_idempotent_call_that_may_have_reached_the_server_is_not_resent(rig: Rig) -> None:
    always_unavailable(rig)

    error = await rig.failing(RESERVE)

    assert len(rig.attempts) == 1
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "Socket closed")
    assert rig.events_of(RetryNotAttempted) == [RetryNotAttempted(SERVICE, RESERVE, 1, "UNAVAILABLE", "not_idempotent")]


async def test_a_non_idempotent_call_whose_attempt_never_left_is_resent_elsewhere(rig: Rig) -> None:
    rig.transport.then(refused(A))

    reply = await rig.unary(RESERVE)

    (refusal,) = rig.transport.refusals
    (sent,) = rig.attempts
    assert sent.endpoint != refusal.endpoint
    assert reply == reply_from(sent.endpoint)
    assert sent.header("grpc-previous-rpc-attempts") == "1"


async def test_a_resent_non_idempotent_call_stops_once_an_attempt_may_have_reached_a_server(rig: Rig) -> None:
    rig.transport.then(refused(A), unavailable("Socket closed"))

    error = await rig.failing(RESERVE)

    assert len(rig.transport.refusals) == len(rig.attempts) == 1
    assert error.details() == "Socket closed"


async def test_a_non_idempotent_call_whose_handshake_failed_is_resent_elsewhere(make_rig: MakeRig) -> None:
    handshakes = HandshakesFail()
    rig = make_rig(explain_failure=handshakes)
    rig.serve(A, B, C)
    rig.transport.then(refused(A))

    reply = await rig.unary(RESERVE)

    (refusal,) = rig.transport.refusals
    (sent,) = rig.attempts
    assert handshakes.asked == [refusal.endpoint]
    assert sent.endpoint != refusal.endpoint
    assert reply == reply_from(sent.endpoint)


async def test_a_caller_whose_every_handshake_failed_reads_why_and_nothing_was_sent(make_rig: MakeRig) -> None:
    handshakes = HandshakesFail()
    rig = make_rig(explain_failure=handshakes)
    rig.serve(A, B, C)
    for endpoint in (A, B, C):
        rig.transport.always(endpoint, refused(endpoint))

    error = await rig.failing(RESERVE)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert info_of(error).reason == ErrorReason.TLS_HANDSHAKE_FAILED
    assert error.details() == f"TLS handshake with {rig.transport.refusals[-1].endpoint} failed"
    assert len(handshakes.asked) == len(rig.transport.refusals) == 3
    assert rig.attempts == []


async def test_a_started_call_is_never_explained_as_a_handshake_whatever_its_text(make_rig: MakeRig) -> None:
    """Only an attempt that could not connect is explained: a started call's failure was answered by a server or
    a broken connection, and its words (a server writes its own) must not make it look unsent."""
    handshakes = HandshakesFail()
    rig = make_rig(explain_failure=handshakes)
    rig.serve(A, B, C)
    details = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5001: Tls handshake failed "
        "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:CERTIFICATE_VERIFY_FAILED"
    )
    rig.transport.then(unavailable(details))

    error = await rig.failing(RESERVE)

    assert handshakes.asked == []
    assert (error.details(), error_info(error)) == (details, None)
    assert len(rig.attempts) == 1
    assert rig.events_of(RetryNotAttempted) == [RetryNotAttempted(SERVICE, RESERVE, 1, "UNAVAILABLE", "not_idempotent")]


@pytest.mark.parametrize(
    "details",
    [
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.9:443: Connection refused",
        "sendmsg: Broken pipe (32)",
        "Received RST_STREAM with error code 7",
    ],
)
async def test_a_status_whose_text_says_never_sent_is_not_proof_that_it_was_not(rig: Rig, details: str) -> None:
    """A server writes its own details: a handler that passes a downstream's connection error on, or a
    connection whose write error grpc puts on a stream the server already ran, says nothing about this call."""
    rig.transport.then(unavailable(details))

    error = await rig.failing(RESERVE)

    assert len(rig.attempts) == 1
    assert error.details() == details
    assert rig.events_of(RetryNotAttempted) == [RetryNotAttempted(SERVICE, RESERVE, 1, "UNAVAILABLE", "not_idempotent")]


async def test_a_sidecar_that_could_not_reach_its_app_with_this_call_lets_it_be_resent_elsewhere(rig: Rig) -> None:
    info = {"app": "127.0.0.1:50051", "method": RESERVE}
    rig.transport.then(mesh_status(NoHealthyEndpoint("the app did not take the call", metadata=info)))

    reply = await rig.unary(RESERVE)

    first, second = rig.attempts
    assert second.endpoint != first.endpoint
    assert reply == reply_from(second.endpoint)


async def test_an_app_refusal_passed_on_by_a_handler_of_another_method_is_not_resent(rig: Rig) -> None:
    info = {"app": "127.0.0.1:50051", "method": "/shop.payments.v1.Payments/Charge"}
    rig.transport.then(mesh_status(NoHealthyEndpoint("the app did not take the call", metadata=info)))

    await rig.failing(RESERVE)

    assert len(rig.attempts) == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.ABORTED, grpc.StatusCode.UNKNOWN])
async def test_an_upstream_failed_answer_is_never_retried_and_never_counts_against_the_breaker(
    make_rig: MakeRig, code: grpc.StatusCode
) -> None:
    """The server's handler failed because its own upstream did: the mesh below retried already, and the
    server itself is healthy."""
    rig = make_rig(retry={"on": ["UNAVAILABLE", "ABORTED", "UNKNOWN"]}, breaker={"failures": 2})
    rig.serve(A)
    failed = UpstreamFailed("ledger failed", metadata={"upstream": "ledger"}, code=code)
    rig.transport.always(A, mesh_status(failed))

    for _ in range(5):
        error = await rig.failing(GET)
        assert error.code() is code

    assert len(rig.attempts) == 5
    assert rig.events_of(RetryNotAttempted)[0].why == "upstream_failed"
    assert "breakers: 1 closed" in repr(rig.upstream)


# ---------------------------------------------------------------- how long a retry waits


@pytest.mark.parametrize("seed", range(5))
async def test_backoff_sleeps_are_full_jitter_below_the_doubling_ceiling(make_rig: MakeRig, seed: int) -> None:
    rig = make_rig(seed=seed, retry={"max_attempts": 5, "backoff_base": "25ms", "backoff_max": "80ms"})
    rig.serve(A, B, C, D, E)
    always_unavailable(rig, A, B, C, D, E)

    await rig.failing(GET)

    ceilings = [0.025, 0.050, 0.080, 0.080]  # min(backoff_max, backoff_base * 2**(n-1)) after attempt n
    assert len(rig.sleeps) == 4
    assert all(0.0 <= slept <= ceiling for slept, ceiling in zip(rig.sleeps, ceilings, strict=True))
    assert [event.delay_s for event in rig.events_of(RetryScheduled)] == rig.sleeps


async def test_backoff_spreads_retries_over_the_whole_window(make_rig: MakeRig) -> None:
    """Full jitter, not "base plus a little": first retries land anywhere between 0 and backoff_base."""
    rig = make_rig(retry={"backoff_base": "100ms", "backoff_max": "1s"}, breaker={"failures": 1000})
    rig.serve(A, B, C)
    for _ in range(60):
        rig.transport.then(unavailable())
        await rig.unary(GET)

    assert len(rig.sleeps) == 60
    assert max(rig.sleeps) <= 0.100
    assert min(rig.sleeps) < 0.025
    assert max(rig.sleeps) > 0.075


@pytest.mark.parametrize("seed", range(8))
async def test_a_retry_never_sleeps_past_the_deadline(make_rig: MakeRig, seed: int) -> None:
    rig = make_rig(seed=seed, retry={"max_attempts": 5, "backoff_base": "100ms", "backoff_max": "1s"})
    rig.serve(A, B, C, D, E)
    always_unavailable(rig, A, B, C, D, E)
    deadline = rig.clock.now + 0.25
    floor = rig.upstream.policy.deadline_floor

    error = await rig.failing(GET, timeout=0.25)

    assert error.code() is grpc.StatusCode.UNAVAILABLE  # the last attempt's error, not a late DEADLINE_EXCEEDED
    assert rig.clock.now <= deadline - floor
    assert all(attempt.timeout is not None and attempt.timeout >= floor for attempt in rig.attempts)
    assert len(rig.sleeps) == len(rig.attempts) - 1


async def test_a_call_ends_with_the_last_error_when_the_next_wait_would_pass_its_deadline(rig: Rig) -> None:
    always_unavailable(rig)
    rig.transport.then(unavailable("overloaded, come back later", pushback_ms="500"))

    error = await rig.failing(GET, timeout=0.3)

    assert len(rig.attempts) == 1
    assert rig.sleeps == []
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "overloaded, come back later")


async def test_a_retry_refused_by_the_deadline_is_reported(rig: Rig) -> None:
    always_unavailable(rig)
    rig.transport.then(unavailable(pushback_ms="500"))

    await rig.failing(GET, timeout=0.3)

    assert [event.why for event in rig.events_of(RetryNotAttempted)] == ["deadline"]


# ---------------------------------------------------------------- what the server says about retrying


async def test_server_pushback_sets_the_retry_delay(rig: Rig) -> None:
    rig.transport.then(unavailable(pushback_ms="300"))

    await rig.unary(GET)

    assert rig.sleeps == [0.3]
    assert len(rig.attempts) == 2


@pytest.mark.parametrize("value", ["-1", "soon"])
async def test_a_negative_or_unreadable_pushback_stops_retries(rig: Rig, value: str) -> None:
    rig.transport.then(unavailable("draining", pushback_ms=value))
    budget_before = rig.upstream.budget.remaining

    error = await rig.failing(GET)

    assert len(rig.attempts) == 1
    assert rig.sleeps == []
    assert error.details() == "draining"
    assert error_info(error) is None  # the server's own error, passed through untouched
    assert rig.upstream.budget.remaining >= budget_before  # no retry was paid for


# ---------------------------------------------------------------- the retry budget


def stingy(make_rig: MakeRig) -> Rig:
    """Exactly one retry per 10 s window: no ratio, a floor of 0.1 retries per second."""
    rig = make_rig(retry={"budget_ratio": 0, "budget_min_per_s": 0.1, "budget_ttl": "10s"})
    rig.serve(A, B, C)
    always_unavailable(rig)
    return rig


async def test_a_spent_retry_budget_refuses_retries_with_budget_exhausted(make_rig: MakeRig) -> None:
    rig = stingy(make_rig)

    first = await rig.failing(GET)
    assert len(rig.attempts) == 2  # the window's one retry, then the budget said no
    second = await rig.failing(GET)
    assert len(rig.attempts) == 3  # no retry at all

    for error, attempts in ((first, "2"), (second, "1")):
        info = info_of(error)
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert info.reason == ErrorReason.BUDGET_EXHAUSTED
        assert (info.metadata["upstream"], info.metadata["attempts"]) == (SERVICE, attempts)
        assert "retry budget of inventory is spent" in (error.details() or "")
    assert info_of(first).metadata["endpoints"].count(",") == 1  # both endpoints the call tried
    assert [event.why for event in rig.events_of(RetryNotAttempted)] == ["budget", "budget"]


async def test_the_retry_budget_refills_as_its_window_passes(make_rig: MakeRig) -> None:
    rig = stingy(make_rig)
    await rig.failing(GET)
    await rig.failing(GET)
    assert len(rig.attempts) == 3

    rig.clock.advance(10.0)
    await rig.failing(GET)

    assert len(rig.attempts) == 5
