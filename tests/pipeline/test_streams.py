"""Streams through the same pipeline (gRPC A6's rules): a stream is retried only before its first response
message and only while the request messages it sent can all be sent again; its bulkhead slot is held until
it ends."""

from __future__ import annotations

import grpc
import pytest

from meshlet.errors import ErrorReason
from meshlet.events import RetryNotAttempted
from tests.pipeline.conftest import GET, SERVICE, UPLOAD, WATCH, A, MakeRig, Rig, info_of
from tests.pipeline.scripted import EOF, Stream, reply_from, unavailable

ITEMS = [b"sku-1:10", b"sku-2:4", b"sku-3:0"]


async def test_a_response_stream_that_fails_before_its_first_message_is_retried_elsewhere(rig: Rig) -> None:
    rig.transport.then(Stream([], error=unavailable()), Stream([b"10", b"9"]))

    messages = [message async for message in rig.channel.unary_stream(WATCH)(b"sku-1")]

    assert messages == [b"10", b"9"]
    first, second = rig.attempts
    assert second.endpoint != first.endpoint
    assert second.header("grpc-previous-rpc-attempts") == "1"


async def test_a_response_stream_that_fails_after_its_first_message_is_not_retried(rig: Rig) -> None:
    rig.transport.then(Stream([b"10"], error=unavailable("Socket closed")))
    stream = rig.channel.unary_stream(WATCH)(b"sku-1")

    assert await stream.read() == b"10"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()

    assert caught.value.details() == "Socket closed"
    assert len(rig.attempts) == 1


async def test_a_stream_holds_its_bulkhead_slot_until_it_ends(make_rig: MakeRig) -> None:
    rig = make_rig(max_in_flight=1)
    rig.serve(A)
    rig.transport.then(Stream([b"10", b"9"]))
    stream = rig.channel.unary_stream(WATCH)(b"sku-1")

    assert await stream.read() == b"10"
    refused_while_open = await rig.failing(GET)
    assert await stream.read() == b"9"
    assert await stream.read() is EOF

    assert info_of(refused_while_open).reason == ErrorReason.BULKHEAD_FULL
    assert rig.upstream.bulkhead.in_flight == 0
    assert await rig.unary(GET) == reply_from(A)


async def test_a_retried_client_stream_resends_every_message(rig: Rig) -> None:
    rig.transport.then(unavailable())

    reply = await rig.channel.stream_unary(UPLOAD)(iter(ITEMS))

    first, second = rig.attempts
    assert first.sent == second.sent == ITEMS
    assert reply == reply_from(second.endpoint)


async def test_a_client_stream_written_message_by_message_is_retried_whole(rig: Rig) -> None:
    rig.transport.then(unavailable())
    call = rig.channel.stream_unary(UPLOAD)()
    for item in ITEMS:
        await call.write(item)
    await call.done_writing()

    reply = await call

    assert [attempt.sent for attempt in rig.attempts] == [ITEMS, ITEMS]
    assert reply == reply_from(rig.attempts[-1].endpoint)


async def test_a_client_stream_larger_than_the_replay_buffer_is_not_resent(make_rig: MakeRig) -> None:
    rig = make_rig(retry={"replay_buffer_bytes": 10})
    rig.serve(A)
    rig.transport.then(unavailable("Socket closed"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.channel.stream_unary(UPLOAD)(iter(ITEMS))

    assert caught.value.details() == "Socket closed"
    assert len(rig.attempts) == 1
    assert rig.events_of(RetryNotAttempted) == [
        RetryNotAttempted(SERVICE, UPLOAD, 1, "UNAVAILABLE", "replay_buffer_overflowed")
    ]


async def test_a_client_stream_larger_than_the_replay_buffer_is_never_resent_truncated(make_rig: MakeRig) -> None:
    rig = make_rig(retry={"replay_buffer_bytes": 10})
    rig.serve(A)
    rig.transport.then(unavailable())

    with pytest.raises(grpc.aio.AioRpcError):
        await rig.channel.stream_unary(UPLOAD)(iter(ITEMS))

    assert [attempt.sent for attempt in rig.attempts] == [ITEMS]


async def test_a_bidirectional_stream_is_retried_before_its_first_reply(rig: Rig) -> None:
    rig.transport.then(Stream([], error=unavailable()), Stream([b"ack-1", b"ack-2"]))

    replies = [reply async for reply in rig.channel.stream_stream(UPLOAD)(iter(ITEMS[:2]))]

    assert replies == [b"ack-1", b"ack-2"]
    assert [attempt.sent for attempt in rig.attempts] == [ITEMS[:2], ITEMS[:2]]
