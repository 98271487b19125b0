"""The bounded replay buffer behind stream retries (gRPC A6).

A client-streaming request can be re-sent only while every message sent so far is still at hand. The buffer
keeps them until it would exceed its limit; from then on the call is *committed* and may no longer be retried.
A response stream commits the call too, when its first message arrives (the pipeline decides that part).

Rules:
1. Each attempt reads the request from `replay()`: first the buffered messages, then new ones from the source.
2. New messages are buffered while the buffered size stays within `limit_bytes`; the first one that does not fit
   sets `overflowed` and drops the buffer.
3. A call whose buffer overflowed cannot be retried (`can_replay()` is False), whatever its status.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any


def message_size(message: Any) -> int:
    """Bytes a message takes on the wire: raw bytes (sidecar) or a protobuf message (SDK)."""
    if isinstance(message, bytes | bytearray | memoryview):
        return len(message)
    byte_size: Callable[[], int] | None = getattr(message, "ByteSize", None)
    return byte_size() if byte_size is not None else 0


class ReplayableRequests:
    """Wraps the caller's request stream so an attempt can be replayed until the buffer overflows."""

    __slots__ = ("_buffer", "_exhausted", "_limit", "_size", "_source", "overflowed")

    def __init__(self, source: AsyncIterable[Any] | Iterable[Any], limit_bytes: int) -> None:
        self._source: AsyncIterator[Any] | None = None
        if isinstance(source, AsyncIterable):
            self._source = aiter(source)
        else:
            self._source = _to_async(iter(source))
        self._limit = limit_bytes
        self._buffer: list[Any] = []
        self._size = 0
        self._exhausted = False
        self.overflowed = False

    def can_replay(self) -> bool:
        return not self.overflowed

    async def replay(self) -> AsyncIterator[Any]:
        """The request stream for one attempt: what earlier attempts sent, then the rest of the source."""
        for message in tuple(self._buffer):
            yield message
        while not self._exhausted and self._source is not None:
            try:
                message = await anext(self._source)
            except StopAsyncIteration:
                self._exhausted = True
                return
            self._keep(message)
            yield message

    def _keep(self, message: Any) -> None:
        if self.overflowed:
            return
        self._size += message_size(message)
        if self._size > self._limit:
            self.overflowed = True
            self._buffer = []
        else:
            self._buffer.append(message)

    def __repr__(self) -> str:
        state = "overflowed" if self.overflowed else f"{len(self._buffer)} messages, {self._size} bytes"
        return f"<ReplayableRequests {state}, limit {self._limit}>"


async def _to_async(iterator: Any) -> AsyncIterator[Any]:
    for item in iterator:
        yield item
