"""The bounded replay buffer behind stream retries (gRPC A6).

A client-streaming request can be re-sent only while every message sent so far is still at hand. The buffer
keeps them until it would exceed its limit; from then on the call is *committed* and may no longer be retried.
A response stream commits the call too, when its first message arrives (the pipeline decides that part).

Rules (the I/O side, transport/streams.ReplayableRequests, applies rule 1):
1. Each attempt reads the request from `replay()`: first the buffered messages, then new ones from the source.
2. New messages are buffered while the buffered size stays within `limit_bytes`; the first one that does not fit
   sets `overflowed` and drops the buffer.
3. A call whose buffer overflowed cannot be retried (`can_replay()` is False), whatever its status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def message_size(message: Any) -> int:
    """Bytes a message takes on the wire: raw bytes (sidecar) or a protobuf message (SDK)."""
    if isinstance(message, bytes | bytearray | memoryview):
        return len(message)
    byte_size: Callable[[], int] | None = getattr(message, "ByteSize", None)
    return byte_size() if byte_size is not None else 0


class ReplayBuffer:
    """The messages a client stream has sent so far, kept while they fit in `limit_bytes` (rules 2 and 3)."""

    __slots__ = ("_limit", "_messages", "_size", "overflowed")

    def __init__(self, limit_bytes: int) -> None:
        self._limit = limit_bytes
        self._messages: list[Any] = []
        self._size = 0
        self.overflowed = False

    def keep(self, message: Any) -> None:
        if self.overflowed:
            return
        self._size += message_size(message)
        if self._size > self._limit:
            self.overflowed = True
            self._messages = []
        else:
            self._messages.append(message)

    def can_replay(self) -> bool:
        return not self.overflowed

    def messages(self) -> tuple[Any, ...]:
        """What an attempt re-sends before it reads on from the source."""
        return tuple(self._messages)

    def __repr__(self) -> str:
        state = "overflowed" if self.overflowed else f"{len(self._messages)} messages, {self._size} bytes"
        return f"<ReplayBuffer {state}, limit {self._limit}>"
