"""Per-endpoint circuit breakers through the whole pipeline: a failing instance is ejected while its siblings
keep serving, it is probed once its reset timeout has passed, and a service whose every instance fails is
refused at once with BREAKER_OPEN."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from meshlet.endpoints import Endpoint
from meshlet.errors import ErrorReason
from meshlet.events import BreakerClosed, BreakerHalfOpened, BreakerOpened
from tests.pipeline.conftest import GET, RESERVE, SERVICE, WATCH, A, B, C, MakeRig, Rig, info_of, until
from tests.pipeline.scripted import Stream, failure, reply_from, unavailable


async def open_breaker_of(rig: Rig, endpoint: Endpoint) -> BreakerOpened:
    """Call until `endpoint`'s breaker opens; every call still succeeds, retried on a sibling."""
    rig.transport.always(endpoint, unavailable())
    for _ in range(100):
        assert await rig.unary(GET) != reply_from(endpoint)
        opened = [event for event in rig.events_of(BreakerOpened) if event.endpoint == endpoint]
        if opened:
            return opened[-1]
    raise AssertionError(f"the breaker of {endpoint} never opened: {rig!r}")


async def test_five_consecutive_unavailable_open_an_endpoints_breaker_and_it_stops_being_picked(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(balancer="round_robin")  # round robin would come back to A every third pick
    rig.serve(A, B, C)

    opened = await open_breaker_of(rig, A)

    assert (opened.upstream, opened.endpoint) == (SERVICE, A)
    assert 8.0 <= opened.reopen_after_s <= 12.0  # reset_timeout 10 s, jittered by 20 %
    assert len(rig.transport.to(A)) == 5
    assert "2 admitted | breakers: 2 closed, 1 open" in repr(rig.upstream)
    timer = rig.upstream._readmit_timer  # re-admits A for its probe when the reset timeout is due
    assert timer is not None
    assert timer.when() - asyncio.get_running_loop().time() == pytest.approx(opened.reopen_after_s, abs=0.5)
    for _ in range(30):
        await rig.unary(GET)
    assert len(rig.transport.to(A)) == 5


async def test_after_the_reset_timeout_exactly_one_probe_goes_to_the_endpoint_and_its_success_closes_it(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(balancer="round_robin")
    rig.serve(A, B, C)
    opened = await open_breaker_of(rig, A)
    probe = asyncio.get_running_loop().create_future()
    rig.transport.script(A, probe)
    rig.transport.always(A, reply_from(A))  # A has recovered; its probe answers when the test says so

    rig.clock.advance(opened.reopen_after_s)
    rig.upstream._rebuild()  # what the readmission timer does when the reset timeout is due
    calls = [asyncio.ensure_future(rig.unary(GET)) for _ in range(30)]
    await until(lambda: sum(call.done() for call in calls) == 29, "every call but the probe answered")

    assert len(rig.transport.to(A)) == 5 + 1
    assert rig.events_of(BreakerHalfOpened) == [BreakerHalfOpened(SERVICE, A)]
    assert "half_open" in repr(rig.upstream)

    probe.set_result(b"A is back")
    replies = await asyncio.gather(*calls)

    assert replies.count(b"A is back") == 1
    assert rig.events_of(BreakerClosed) == [BreakerClosed(SERVICE, A)]
    assert "breakers: 3 closed" in repr(rig.upstream)
    before = len(rig.transport.to(A))
    for _ in range(9):
        await rig.unary(GET)
    assert len(rig.transport.to(A)) == before + 3  # back in the rotation


async def test_a_failed_probe_keeps_the_endpoint_out_for_longer(make_rig: MakeRig) -> None:
    rig = make_rig(balancer="round_robin")
    rig.serve(A, B, C)
    opened = await open_breaker_of(rig, A)

    rig.clock.advance(opened.reopen_after_s)
    rig.upstream._rebuild()
    for _ in range(3):
        assert await rig.unary(GET) != reply_from(A)  # the failed probe's call is retried on a sibling

    reopened = rig.events_of(BreakerOpened)
    assert len(reopened) == 2
    assert 16.0 <= reopened[-1].reopen_after_s <= 24.0  # the reset timeout doubles: 20 s, jittered by 20 %
    assert len(rig.transport.to(A)) == 5 + 1


async def test_when_every_endpoint_is_open_calls_fail_fast_with_breaker_open(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.serve(A, B)
    rig.transport.always(A, unavailable())
    rig.transport.always(B, unavailable())
    for _ in range(20):
        await rig.failing(GET)
        if len(rig.events_of(BreakerOpened)) == 2:
            break
    attempts = len(rig.attempts)

    error = await rig.failing(GET)

    info = info_of(error)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert info.reason == ErrorReason.BREAKER_OPEN
    assert "circuit open for inventory" in (error.details() or "")
    assert len(rig.attempts) == attempts  # refused before any attempt
    assert {event.endpoint for event in rig.events_of(BreakerOpened)} == {A, B}


async def test_only_consecutive_failures_count_an_application_answer_in_between_resets_them(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    rig.serve(A)
    not_found = failure(grpc.StatusCode.NOT_FOUND, "no such item")
    rig.transport.script(A, *[unavailable()] * 4, not_found, *[unavailable()] * 4)

    for _ in range(9):
        await rig.failing(RESERVE)  # not idempotent: one attempt per call

    assert len(rig.attempts) == 9
    assert rig.events_of(BreakerOpened) == []
    assert "breakers: 1 closed" in repr(rig.upstream)


async def test_a_retry_while_a_probe_is_in_flight_goes_back_to_the_healthy_endpoint(make_rig: MakeRig) -> None:
    rig = make_rig(balancer="round_robin")
    rig.serve(A, B)
    opened = await open_breaker_of(rig, A)
    rig.transport.script(A, asyncio.get_running_loop().create_future())  # A's probe, never answered here
    rig.clock.advance(opened.reopen_after_s)
    rig.upstream._rebuild()
    calls = []
    while len(rig.transport.to(A)) == 5:
        calls.append(asyncio.ensure_future(rig.unary(GET)))
        await until(lambda: calls[-1].done() or len(rig.transport.to(A)) == 6, "the call answered or probed")
    rig.transport.script(B, unavailable())  # B drops one call, then answers again

    reply = await rig.unary(GET)

    assert reply == reply_from(B)


async def test_cancelling_calls_sent_before_the_breaker_opened_lets_no_second_probe_out(make_rig: MakeRig) -> None:
    """Half-open admits one probe at a time, however many older attempts to the endpoint end cancelled."""
    rig = make_rig(balancer="round_robin")
    rig.serve(A, B, C)
    loop = asyncio.get_running_loop()
    rig.transport.script(A, *(loop.create_future() for _ in range(3)))  # A hangs on these three
    early = [asyncio.ensure_future(rig.unary(GET)) for _ in range(9)]
    await until(lambda: len(rig.transport.to(A)) == 3, "three calls hang on A")
    opened = await open_breaker_of(rig, A)
    hanging = loop.create_future()
    rig.transport.always(A, hanging)  # every probe hangs too, so each one sent stays in flight
    rig.clock.advance(opened.reopen_after_s)
    rig.upstream._rebuild()
    sent_before = len(rig.transport.to(A))

    later = [asyncio.ensure_future(rig.unary(GET)) for _ in range(10)]
    await until(lambda: sum(call.done() for call in later) == 9, "every call but the probe answered")
    for call in early:
        call.cancel()  # the three still on A end cancelled: none of them was the probe
    await until(lambda: all(call.done() for call in early), "the early calls ended")
    more = [asyncio.ensure_future(rig.unary(GET)) for _ in range(10)]
    await until(
        lambda: sum(call.done() for call in more) + len(rig.transport.to(A)) - sent_before - 1 == len(more),
        "every later call answered or hangs on A",
    )

    assert len(rig.transport.to(A)) == sent_before + 1  # the one probe, still in flight
    hanging.set_result(b"A is back")
    await asyncio.gather(*later, *more)


async def test_streams_that_run_into_their_callers_deadline_do_not_count_against_their_endpoint(
    make_rig: MakeRig,
) -> None:
    """A watch that streams until its caller's deadline ends it was answered all along."""
    rig = make_rig()
    rig.serve(A)
    ended = failure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    rig.transport.always(A, Stream([b"10", b"9"], error=ended))

    for _ in range(6):
        stream = rig.channel.unary_stream(WATCH)(b"sku-1", timeout=60.0)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [message async for message in stream]
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    assert rig.events_of(BreakerOpened) == []
    assert "breakers: 1 closed" in repr(rig.upstream)


async def test_attempts_cut_short_by_the_callers_own_deadline_do_not_count_against_their_endpoint(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    rig.serve(A)
    rig.transport.always(A, failure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    for _ in range(6):
        await rig.failing(GET, timeout=0.02)  # 20 ms of the upstream's 5 s timeout
    assert rig.events_of(BreakerOpened) == []

    for _ in range(5):
        await rig.failing(GET)  # the upstream's whole timeout, unanswered
    assert [event.endpoint for event in rig.events_of(BreakerOpened)] == [A]


async def test_an_endpoint_back_from_a_short_absence_keeps_its_open_breaker(make_rig: MakeRig) -> None:
    """A Consul flap neither re-admits a failing instance nor forgets what its breaker knew; an instance gone
    for longer than the channels' grace comes back as new."""
    rig = make_rig(balancer="round_robin")
    rig.serve(A, B, C)
    await open_breaker_of(rig, A)

    rig.serve(B, C)
    rig.clock.advance(1.0)
    rig.serve(A, B, C)

    assert "breakers: 2 closed, 1 open" in repr(rig.upstream)
    sent = len(rig.transport.to(A))
    for _ in range(9):
        await rig.unary(GET)
    assert len(rig.transport.to(A)) == sent

    rig.serve(B, C)
    rig.clock.advance(rig.transport.close_grace_s + 1.0)
    rig.serve(A, B, C)

    assert "breakers: 3 closed" in repr(rig.upstream)
