"""The status of an inbound call whose caller went away: what grpc.aio does not tell.

grpc.aio cancels a server call's task when its caller cancels it or its deadline passes, and tells the call's done
callbacks nothing of it: ``context.code()`` stays None and ``context.cancelled()`` False, so the metrics, the
access log and the span of a call served as a stream would record OK. So the handler that sees the cancellation
marks the call with the code its caller saw (`mark_abandoned`), and the stages that see it themselves (a unary
call's) read the same code (`abandoned_code`).

A deadline that passes at the caller reaches the next hop as a cancellation, a moment before that hop's own
deadline (each hop's deadline is counted from when the call reached it): a cancellation that leaves less than
DEADLINE_SLACK_S of the call's deadline is its deadline passing.
"""

from __future__ import annotations

from typing import Any

import grpc

DEADLINE_SLACK_S = 0.1


def abandoned_code(context: Any) -> grpc.StatusCode:
    """DEADLINE_EXCEEDED for a call cancelled at its deadline, else CANCELLED."""
    remaining: float | None = context.time_remaining() if context is not None else None
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def mark_abandoned(context: Any) -> None:
    """Give a call whose task grpc cancelled the code its caller saw, unless it ended with a code of its own."""
    if context.code() is None:
        context.set_code(abandoned_code(context))
