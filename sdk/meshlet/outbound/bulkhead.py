"""Stage: cap the calls in flight to one upstream; beyond the cap, RESOURCE_EXHAUSTED at once.

Above retry, so a retried call keeps the one slot it holds. The slot is released when the reply completes,
for a stream when it closes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from meshlet.call import Call
from meshlet.errors import BulkheadFull
from meshlet.pipeline import ReplyStream
from meshlet.resilience.bulkhead import InFlightLimit


class LimitInFlight:
    __slots__ = ("_limit",)

    def __init__(self, limit: InFlightLimit) -> None:
        self._limit = limit

    async def __call__(self, call: Call, next: Callable[[Call], Awaitable[Any]]) -> Any:
        limit = self._limit
        if not limit.try_acquire():
            raise BulkheadFull(
                f"{call.upstream} already has {limit.in_flight} calls in flight, the most its bulkhead allows: "
                f"retry after the pushback or raise upstreams.{call.upstream}.max_in_flight",
                metadata={"upstream": call.upstream, "in_flight": str(limit.in_flight)},
                pushback_ms=50,
            )
        try:
            reply = await next(call)
        except BaseException:
            limit.release()
            raise
        if isinstance(reply, ReplyStream):
            reply.add_done_callback(lambda _error: limit.release())
        else:
            limit.release()
        return reply
