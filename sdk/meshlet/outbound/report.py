"""Stage (per attempt): tell the upstream how the attempt went, so balancing and breakers see every outcome.

In-flight counts feed the least-loaded picker; infrastructure failures count against the endpoint's breaker and
anything else (success or an application status) counts for it. For a stream the report waits for its end.
An attempt that ran out of time without a fair share of it (the caller's own short deadline), or a committed
stream that ran into its deadline, says nothing of the endpoint: it is reported as the caller giving up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc

from meshlet.call import Call
from meshlet.endpoints import Endpoint
from meshlet.errors import MeshError
from meshlet.pipeline import ReplyStream
from meshlet.resilience.breaker import had_fair_share

NO_VERDICT = "CANCELLED"
"""The code reported for an attempt the caller gave up on: it neither counts for nor against the endpoint."""


class OutcomeSink(Protocol):
    def attempt_started(self, endpoint: Endpoint) -> None: ...

    def attempt_finished(
        self, endpoint: Endpoint, code: str | None, may_have_reached_server: bool, attempt: Call
    ) -> None:
        """`code` is the gRPC status name, None for success, NO_VERDICT when the caller gave up (cancelled, or its
        deadline ran out first). `attempt` is the call whose attempt ended (as the pick stage passed it on)."""


class ReportOutcome:
    __slots__ = ("_sink", "_timeout_s")

    def __init__(self, sink: OutcomeSink, upstream_timeout_s: float) -> None:
        self._sink = sink
        self._timeout_s = upstream_timeout_s

    async def __call__(self, call: Call, next: Callable[[Call], Awaitable[Any]]) -> Any:
        endpoint = call.endpoint
        assert endpoint is not None
        sink = self._sink
        sink.attempt_started(endpoint)
        try:
            reply = await next(call)
        except grpc.aio.AioRpcError as error:
            sink.attempt_finished(endpoint, self._failed(error, call), call.may_have_reached_server, call)
            raise
        except BaseException:
            sink.attempt_finished(endpoint, NO_VERDICT, call.may_have_reached_server, call)
            raise
        if isinstance(reply, ReplyStream):
            reply.add_done_callback(lambda error: sink.attempt_finished(endpoint, _stream_end(error), True, call))
        else:
            sink.attempt_finished(endpoint, None, True, call)
        return reply

    def _failed(self, error: grpc.aio.AioRpcError, call: Call) -> str:
        """The code to report for a failed attempt: a deadline without a fair share of time is the caller's."""
        code: grpc.StatusCode = error.code()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and not had_fair_share(call.attempt_timeout_s, self._timeout_s):
            return NO_VERDICT
        if isinstance(error, MeshError):  # the mesh closed the channel under the call: not the endpoint's doing
            return NO_VERDICT
        name: str = code.name
        return name


def _stream_end(error: BaseException | None) -> str | None:
    """How a committed stream ended, as a code to report: it answered, so its deadline is the caller's."""
    if error is None:
        return None
    if isinstance(error, grpc.aio.AioRpcError) and not isinstance(error, MeshError):
        code: grpc.StatusCode = error.code()
        if code is grpc.StatusCode.OK:
            return None
        return NO_VERDICT if code is grpc.StatusCode.DEADLINE_EXCEEDED else code.name
    return NO_VERDICT
