"""What a refusing server reads of a refused call's request stream before it answers (transport/raw.py): all
of it up to the half-close, so that the client is not still writing when the refusal arrives, but never more than
the bounds, so that a refused caller cannot keep a server reading."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from meshlet.transport import raw
from meshlet.transport.raw import REFUSAL_READ_BYTES, read_to_half_close
from meshlet_api.echo.v1 import echo_pb2

MIB = 1024 * 1024


class Requests:
    """A request stream that counts what was read of it; `endless` never half-closes, `then_wait` stops writing
    after its messages without half-closing (a client waiting for a reply)."""

    def __init__(self, *messages: object, endless: bool = False, then_wait: bool = False) -> None:
        self.messages = messages
        self.endless = endless
        self.then_wait = then_wait
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[object]:
        while True:
            for message in self.messages:
                self.read += 1
                yield message
            if self.then_wait:
                await asyncio.Event().wait()
            if not self.endless:
                return


async def test_a_refused_stream_is_read_to_its_half_close() -> None:
    requests = Requests(b"a" * MIB, b"b", echo_pb2.EchoRequest(message="c"))

    assert await read_to_half_close(aiter(requests)) is True
    assert requests.read == 3


async def test_a_refused_caller_that_writes_without_end_is_read_no_further_than_the_byte_bound() -> None:
    requests = Requests(b"x" * MIB, endless=True)

    assert await read_to_half_close(aiter(requests)) is False
    assert requests.read == REFUSAL_READ_BYTES // MIB + 1


async def test_protobuf_messages_count_by_their_size_on_the_wire() -> None:
    message = echo_pb2.EchoRequest(payload=b"x" * (MIB - 4))  # a 1-byte tag and a 3-byte length make it 1 MiB
    assert message.ByteSize() == MIB
    requests = Requests(message, endless=True)

    assert await read_to_half_close(aiter(requests)) is False
    assert requests.read == REFUSAL_READ_BYTES // MIB + 1


async def test_a_refused_caller_that_waits_for_a_reply_is_answered_at_the_time_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(raw, "REFUSAL_READ_S", 0.01)
    requests = Requests(b"hello?", then_wait=True)

    assert await read_to_half_close(aiter(requests)) is False
    assert requests.read == 1
