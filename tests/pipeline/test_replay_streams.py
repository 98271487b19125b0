"""The request side of a retried client stream, and the reply side of a stream its reader leaves early."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from meshlet.transport.streams import ReplayableRequests


async def test_a_retry_replays_the_whole_stream_even_when_the_failed_attempt_was_cancelled_mid_read() -> None:
    """Regression: cancelling the first attempt while it waited for the caller's next message used to end the
    caller's stream for good, and the retry sent a cut-short stream as if it were complete."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def caller() -> AsyncIterator[bytes]:
        while (message := await queue.get()) is not None:
            yield message

    requests = ReplayableRequests(caller(), limit_bytes=1 << 20)
    first_attempt: list[bytes] = []
    sent_m1 = asyncio.Event()

    async def send_first_attempt() -> None:
        async for message in requests.replay():
            first_attempt.append(message)
            sent_m1.set()

    queue.put_nowait(b"m1")
    attempt = asyncio.ensure_future(send_first_attempt())
    await sent_m1.wait()
    await asyncio.sleep(0)  # let the attempt go back to waiting for m2
    attempt.cancel()  # the attempt's call failed while it waited for m2
    await asyncio.gather(attempt, return_exceptions=True)
    queue.put_nowait(b"m2")
    queue.put_nowait(None)

    retried = [message async for message in requests.replay()]

    assert first_attempt == [b"m1"]
    assert retried == [b"m1", b"m2"]
    assert requests.can_replay()
