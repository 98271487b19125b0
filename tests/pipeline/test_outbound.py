"""The stages above and beside retry, as a caller sees them: the deadline every attempt shares, the bulkhead,
and what discovery's answers (or their absence) do to a call."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from meshlet.call import Call, Cardinality, Method
from meshlet.endpoints import Endpoint
from meshlet.errors import ErrorReason
from meshlet.events import EndpointsChanged
from tests.pipeline.conftest import GET, RESERVE, SERVICE, A, B, C, MakeRig, Rig, handler_deadline, info_of, until
from tests.pipeline.scripted import PUSHBACK, failure, reply_from, unavailable

# ---------------------------------------------------------------- one deadline for the whole call


async def test_the_policy_timeout_applies_when_nobody_set_a_deadline(rig: Rig) -> None:
    await rig.unary(GET)

    assert rig.attempts[0].timeout == pytest.approx(5.0)


async def test_the_callers_timeout_is_sent_to_the_server(rig: Rig) -> None:
    await rig.unary(GET, timeout=1.5)

    assert rig.attempts[0].timeout == pytest.approx(1.5)


async def test_a_retry_gets_only_what_is_left_of_the_deadline(rig: Rig) -> None:
    rig.transport.then(unavailable(pushback_ms="400"))

    await rig.unary(GET, timeout=1.0)

    assert [attempt.timeout for attempt in rig.attempts] == pytest.approx([1.0, 0.6])


async def test_the_handler_deadline_caps_a_call_with_a_longer_timeout(rig: Rig) -> None:
    with handler_deadline(rig.clock, 0.5):
        await rig.unary(GET, timeout=2.0)

    assert rig.attempts[0].timeout == pytest.approx(0.5)


async def test_the_handler_deadline_is_used_when_the_call_has_none(rig: Rig) -> None:
    with handler_deadline(rig.clock, 0.5):
        await rig.unary(GET)

    assert rig.attempts[0].timeout == pytest.approx(0.5)


async def test_a_call_timeout_shorter_than_the_handler_deadline_wins(rig: Rig) -> None:
    with handler_deadline(rig.clock, 3.0):
        await rig.unary(GET, timeout=0.2)

    assert rig.attempts[0].timeout == pytest.approx(0.2)


async def test_a_call_with_less_time_left_than_the_floor_is_refused_without_an_attempt(rig: Rig) -> None:
    budget_before = rig.upstream.budget.allowed

    error = await rig.failing(GET, timeout=0.002)

    info = info_of(error)
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.reason == ErrorReason.DEADLINE_TOO_SHORT
    assert info.metadata["attempts"] == "0"
    assert "below the 5.0 ms floor" in (error.details() or "")
    assert rig.attempts == []
    assert rig.upstream.budget.allowed == budget_before  # not even counted as a request
    assert rig.upstream.bulkhead.in_flight == 0


async def test_a_handler_with_almost_no_time_left_makes_no_outbound_attempt(rig: Rig) -> None:
    with handler_deadline(rig.clock, 0.001):
        error = await rig.failing(GET, timeout=10.0)

    assert info_of(error).reason == ErrorReason.DEADLINE_TOO_SHORT
    assert rig.attempts == []


async def test_a_raw_call_from_the_sidecar_takes_the_same_path(rig: Rig) -> None:
    """The sidecar hands the upstream's handler raw bytes with no codec; the stages never look inside."""
    rig.transport.then(unavailable())
    call = Call(SERVICE, Method(GET, Cardinality.UNARY_UNARY, idempotent=True), b"\x0a\x05sku-1", timeout=1.0)

    reply = await rig.upstream.handler(call)

    assert reply == reply_from(rig.attempts[-1].endpoint)
    assert [attempt.request for attempt in rig.attempts] == [b"\x0a\x05sku-1"] * 2
    assert call.attempt == 2


# ---------------------------------------------------------------- the bulkhead


async def test_the_bulkhead_refuses_calls_over_max_in_flight_and_frees_slots_as_calls_finish(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(max_in_flight=2)
    rig.serve(A, B)
    loop = asyncio.get_running_loop()
    slow, failing = loop.create_future(), loop.create_future()
    rig.transport.then(slow, failing)
    first = asyncio.ensure_future(rig.unary(GET))
    second = asyncio.ensure_future(rig.unary(RESERVE))
    await until(lambda: len(rig.attempts) == 2, "two calls in flight")

    refused = await rig.failing(GET)

    info = info_of(refused)
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.reason == ErrorReason.BULKHEAD_FULL
    assert (PUSHBACK, "50") in tuple(refused.trailing_metadata() or ())
    assert len(rig.attempts) == 2  # the refused call never reached an endpoint

    slow.set_result(b"slow reply")
    assert await first == b"slow reply"
    assert await rig.unary(GET) == reply_from(rig.attempts[-1].endpoint)  # its slot is free again

    failing.set_result(failure(grpc.StatusCode.INTERNAL, "boom"))
    with pytest.raises(grpc.aio.AioRpcError):
        await second
    assert rig.upstream.bulkhead.in_flight == 0  # a failed call gives its slot back too


async def test_a_cancelled_call_frees_its_slot_and_cancels_its_attempt(make_rig: MakeRig) -> None:
    rig = make_rig(max_in_flight=1)
    rig.serve(A)
    rig.transport.then(asyncio.get_running_loop().create_future())
    call = asyncio.ensure_future(rig.unary(GET))
    await until(lambda: len(rig.attempts) == 1, "the call is in flight")

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    assert rig.attempts[0].cancelled
    assert rig.upstream.bulkhead.in_flight == 0
    assert await rig.unary(GET) == reply_from(A)


async def test_a_retried_call_holds_one_slot(make_rig: MakeRig) -> None:
    rig = make_rig(max_in_flight=1)
    rig.serve(A, B)
    rig.transport.then(unavailable(), unavailable())

    assert await rig.unary(GET) == reply_from(rig.attempts[-1].endpoint)
    assert len(rig.attempts) == 3


# ---------------------------------------------------------------- discovery's answers


async def test_a_service_without_healthy_instances_fails_fast_naming_it(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.serve()

    error = await rig.failing(GET)

    info = info_of(error)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert info.reason == ErrorReason.NO_HEALTHY_ENDPOINT
    assert info.metadata["upstream"] == SERVICE
    assert "no healthy instance of inventory" in (error.details() or "")
    assert rig.attempts == []
    assert rig.upstream.bulkhead.in_flight == 0


async def test_the_first_call_waits_for_discoverys_first_answer(make_rig: MakeRig) -> None:
    rig = make_rig()
    call = asyncio.ensure_future(rig.unary(GET))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not call.done()

    rig.serve(A)

    assert await call == reply_from(A)


async def test_a_first_call_that_discovery_left_below_the_floor_is_refused_without_an_attempt(
    make_rig: MakeRig,
) -> None:
    """Waiting for discovery's first answer can use up the deadline: the floor applies after the wait too."""
    rig = make_rig()
    call = asyncio.ensure_future(rig.unary(GET, timeout=1.0))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not call.done()

    rig.clock.advance(0.999)  # discovery answers with 1 ms of the call's second left
    rig.serve(A)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert info_of(caught.value).reason == ErrorReason.DEADLINE_TOO_SHORT
    assert rig.attempts == []
    assert rig.upstream.bulkhead.in_flight == 0


async def test_discovery_changes_are_announced_and_a_removed_instance_gets_no_more_calls(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    rig.serve(A, B)
    rig.serve(B, C)
    rig.serve(B, C)  # the same answer again: nothing changed, nothing announced

    changes = [(set(e.added), set(e.removed), e.total) for e in rig.events_of(EndpointsChanged)]
    assert changes == [({A, B}, set(), 2), ({C}, {A}, 2)]
    assert rig.transport.retired == [A]
    for _ in range(20):
        await rig.unary(GET)
    assert {attempt.endpoint for attempt in rig.attempts} == {B, C}


async def test_only_instances_carrying_the_upstreams_tags_receive_calls(make_rig: MakeRig) -> None:
    rig = make_rig(tags=["canary"])
    canary = Endpoint("127.0.0.1", 5009, tags=frozenset({"canary", "v2"}))
    rig.serve(A, B, canary)

    for _ in range(10):
        assert await rig.unary(GET) == reply_from(canary)
