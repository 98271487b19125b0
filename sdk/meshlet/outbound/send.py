"""Terminal stage: send one attempt on the endpoint's channel.

Unary replies come back whole. For a response stream, the attempt lasts until the first message (or the
end): only then is the call committed and the stream handed back up as a ResponseStream, so a failure
before the first message can still be retried (gRPC A6). Client-streaming requests are read from the call's
replay buffer, so a retried attempt re-sends what the failed one sent.

Whether an attempt may have reached a server is decided from facts, never from a status's text (a server
writes its own, and may pass a downstream's "Connection refused" on): a call is started only once its
endpoint's channel has a connection, and an attempt that could not get one was never sent. Once started, a
failed call counts as possibly executed, whatever it says, unless a meshlet server refused this very call
before its handler or app saw it (`refused_before_handler`). gRPC A6 also retries transparently a stream the
server refused (REFUSED_STREAM, or a GOAWAY that excludes it); grpcio does not tell Python about either, so
those count as possibly executed too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from meshlet.call import Call
from meshlet.endpoints import Endpoint
from meshlet.errors import ErrorReason, error_info
from meshlet.transport.channels import EndpointChannels, NotConnected
from meshlet.transport.streams import (
    ResponseStream,
    channel_closed,
    closed_under_the_caller,
    settled,
    start_pumping,
)

# Says why an attempt could not connect to its endpoint (a failed TLS handshake, say) with the same code, or
# returns None; given the time the call has left (see meshlet.security.handshake_failures). Asked only before a
# call was started, so whatever it answers, the attempt stays unsent; a started call's failure is never retold.
ExplainFailure = Callable[[NotConnected, Endpoint, float], Awaitable[grpc.aio.AioRpcError | None]]


class SendOnChannel:
    __slots__ = ("_channels", "_explain")

    def __init__(self, channels: EndpointChannels, explain: ExplainFailure | None = None) -> None:
        self._channels = channels
        self._explain = explain

    async def __call__(self, call: Call) -> Any:
        assert call.endpoint is not None
        assert call.deadline is not None
        channel = self._channels.get(call.endpoint)
        method = call.method
        if not channel.is_ready():
            try:
                await channel.connect(call.deadline.remaining(), call.wait_for_ready)
            except NotConnected as failed:  # no byte of this attempt left: explained, and still unsent
                raise await self._explained(failed, call) from None
        multicallable = channel.callable_for(method)
        timeout = call.attempt_timeout_s = call.deadline.remaining()
        if method.client_streaming:  # written by a task that stops when the call ends (see transport/streams.py)
            grpc_call = multicallable(
                timeout=timeout, metadata=call.attempt_metadata(), wait_for_ready=call.wait_for_ready
            )
            start_pumping(call.request.replay(), grpc_call)
        else:
            grpc_call = multicallable(
                call.request, timeout=timeout, metadata=call.attempt_metadata(), wait_for_ready=call.wait_for_ready
            )
        call.may_have_reached_server = True
        call.transport_call = grpc_call
        try:
            if method.server_streaming:
                return ResponseStream(grpc_call, await grpc_call.read())
            return await grpc_call
        except grpc.aio.AioRpcError as error:
            if method.client_streaming:
                error = await settled(grpc_call, error)
            if refused_before_handler(error, method.path):
                call.may_have_reached_server = False
            raise error from None
        except asyncio.CancelledError:
            if closed_under_the_caller(grpc_call):
                raise channel_closed() from None
            grpc_call.cancel()
            raise

    async def _explained(self, failed: NotConnected, call: Call) -> grpc.aio.AioRpcError:
        """`failed` as the explainer tells it (why a handshake failed, say), or as it is."""
        if self._explain is None:
            return failed
        assert call.endpoint is not None
        assert call.deadline is not None
        return await self._explain(failed, call.endpoint, call.deadline.remaining()) or failed


def refused_before_handler(error: grpc.aio.AioRpcError, method: str) -> bool:
    """A meshlet server refused this very call before its handler or app saw it, so re-sending it cannot
    execute anything twice, whatever the method: its rate limit (RATE_LIMITED), or a sidecar that could not
    connect to its app (NO_HEALTHY_ENDPOINT naming the app). The method must match: a handler that ran and
    passes on a refusal from a deeper hop (its own outbound call) must not make this call look unsent; and a
    meshlet server never relays such a refusal from its handler or app as its own (it answers UPSTREAM_FAILED)."""
    code = error.code()
    if code is not grpc.StatusCode.RESOURCE_EXHAUSTED and code is not grpc.StatusCode.UNAVAILABLE:
        return False
    info = error_info(error)
    if info is None or info.metadata.get("method") != method:
        return False
    if info.reason == ErrorReason.RATE_LIMITED:
        return code is grpc.StatusCode.RESOURCE_EXHAUSTED
    return (
        code is grpc.StatusCode.UNAVAILABLE
        and info.reason == ErrorReason.NO_HEALTHY_ENDPOINT
        and "app" in info.metadata
    )
