"""The streams the edge has open (server streams over NDJSON or SSE, WebSocket calls), so that a shutdown ends
them in the one error shape rather than cutting them: a watch never finishes within ``service.drain_grace``, and
once the grace is over aiohttp closes its connection mid-body (a truncated chunked NDJSON answer, which a client
reads as a network failure). Ended here when the grace runs out, each one's last line, event or frame is
UNAVAILABLE, "open it again", which another instance of the edge answers."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.rpc import status_pb2

from meshlet_edge.status import refusal

SHUTTING_DOWN = "the edge is shutting down: open the stream again, another instance answers"


class OpenStreams:
    def __init__(self) -> None:
        self._calls: set[Any] = set()
        self.ending = False

    def add(self, call: Any) -> None:
        self._calls.add(call)

    def discard(self, call: Any) -> None:
        self._calls.discard(call)

    def __len__(self) -> int:
        return len(self._calls)

    def end_all(self) -> None:
        """Cancel every open stream's call; each then ends with `explain`'s status."""
        self.ending = True
        for call in list(self._calls):
            call.cancel()

    def explain(self, status: status_pb2.Status) -> status_pb2.Status:
        """A call cancelled by `end_all` is UNAVAILABLE with a reason, not the CANCELLED it ended with."""
        if self.ending and status.code == grpc.StatusCode.CANCELLED.value[0]:
            return refusal(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        return status


CANCELLED = refusal(grpc.StatusCode.CANCELLED, "the call was cancelled")


def call_cancelled(error: BaseException) -> bool:
    """A CancelledError that a cancelled call's read raised (grpc.aio's reads do), not one cancelling the task that
    reads: that task goes on, to answer the call's end."""
    task = asyncio.current_task()
    return isinstance(error, asyncio.CancelledError) and task is not None and not task.cancelling()
