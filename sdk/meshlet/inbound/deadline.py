"""Stage: expose the caller's deadline to the handler's own outbound calls.

grpcio knows each inbound call's deadline but does not hand it to calls the handler makes (its open-source
hook returns None), so without this stage a request's time budget would restart at every hop. The stage puts
the remaining deadline in HANDLER_DEADLINE, which outbound/deadline.py reads. grpc.aio runs each call in its own
task, so the value stays set for exactly that call, streaming handlers included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from meshlet.call import InboundCall
from meshlet.deadline import HANDLER_DEADLINE


class ExposeDeadline:
    __slots__ = ()

    async def __call__(self, call: InboundCall, next: Callable[[InboundCall], Awaitable[Any]]) -> Any:
        HANDLER_DEADLINE.set(call.deadline)
        return await next(call)
