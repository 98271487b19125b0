"""Stage: give every call a deadline that all its attempts share.

The caller's timeout, else the deadline of the handler this call is made from (HANDLER_DEADLINE, set by the
inbound pipeline), else the upstream's policy timeout; the tightest of the caller's and the handler's wins.
A call with less than the floor left fails at once: it could not finish anyway, and refusing it early keeps
it from using an endpoint, a slot or the retry budget. The policy timeout never caps a stream whose caller set
no deadline (Envoy's silent 15 s route timeout on streams is a known trap): such a stream gets a day.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from meshlet.call import Call
from meshlet.deadline import HANDLER_DEADLINE, Clock, Deadline
from meshlet.errors import DeadlineTooShort

UNBOUNDED_STREAM_S = 86_400.0


class ApplyDeadline:
    __slots__ = ("_clock", "_floor_s", "_timeout_s")

    def __init__(self, timeout_s: float, floor_s: float, clock: Clock) -> None:
        self._timeout_s = timeout_s
        self._floor_s = floor_s
        self._clock = clock

    async def __call__(self, call: Call, next: Callable[[Call], Awaitable[Any]]) -> Any:
        inherited = HANDLER_DEADLINE.get()
        if call.timeout is not None:
            deadline = Deadline(self._clock() + call.timeout, self._clock).earliest(inherited)
        elif inherited is not None:
            deadline = inherited
        else:
            method = call.method
            timeout = UNBOUNDED_STREAM_S if method.server_streaming or method.client_streaming else self._timeout_s
            deadline = Deadline(self._clock() + timeout, self._clock)
        call.deadline = deadline
        remaining = deadline.remaining()
        if remaining < self._floor_s:
            raise too_short(call, remaining, self._floor_s)
        return await next(call)


def too_short(call: Call, remaining_s: float, floor_s: float, *, attempts: int = 0) -> DeadlineTooShort:
    """The refusal of a call with less than the floor left before an attempt is sent (here, after discovery's
    first answer, or after connecting took the rest); `attempts` sent before it."""
    return DeadlineTooShort(
        f"{call.method.path} to {call.upstream} has {remaining_s * 1000:.1f} ms left, below the "
        f"{floor_s * 1000:.1f} ms floor: give the call (or the request it serves) a longer deadline",
        metadata={"upstream": call.upstream, "remaining_ms": f"{remaining_s * 1000:.1f}", "attempts": str(attempts)},
    )
