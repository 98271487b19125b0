"""Stage (per attempt): tell the upstream how the attempt went, so balancing and breakers see every outcome.

In-flight counts feed the least-loaded picker; infrastructure failures count against the endpoint's breaker and
anything else (success or an application status) counts for it. For a stream the report waits for its end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc

from meshlet.call import Call
from meshlet.endpoints import Endpoint
from meshlet.pipeline import ReplyStream


class OutcomeSink(Protocol):
    def attempt_started(self, endpoint: Endpoint) -> None: ...

    def attempt_finished(
        self, endpoint: Endpoint, code: str | None, may_have_reached_server: bool, attempt: Call
    ) -> None:
        """`code` is the gRPC status name, None for success; cancellation by the caller is "CANCELLED".
        `attempt` is the call whose attempt ended (as the pick stage passed it to the breaker)."""


class ReportOutcome:
    __slots__ = ("_sink",)

    def __init__(self, sink: OutcomeSink) -> None:
        self._sink = sink

    async def __call__(self, call: Call, next: Callable[[Call], Awaitable[Any]]) -> Any:
        endpoint = call.endpoint
        assert endpoint is not None
        sink = self._sink
        sink.attempt_started(endpoint)
        try:
            reply = await next(call)
        except grpc.aio.AioRpcError as error:
            sink.attempt_finished(endpoint, error.code().name, call.may_have_reached_server, call)
            raise
        except BaseException:
            sink.attempt_finished(endpoint, "CANCELLED", call.may_have_reached_server, call)
            raise
        if isinstance(reply, ReplyStream):
            reply.add_done_callback(lambda error: sink.attempt_finished(endpoint, _code_name(error), True, call))
        else:
            sink.attempt_finished(endpoint, None, True, call)
        return reply


def _code_name(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, grpc.aio.AioRpcError):
        code: grpc.StatusCode = error.code()
        return None if code is grpc.StatusCode.OK else code.name
    return "CANCELLED"
