"""ForwardToApp: the terminal of the sidecar's inbound pipeline. It hands each call, as raw bytes, to the local
app over one plaintext channel and relays everything the app answers back to the caller.

Nothing is decoded: requests and replies stay bytes, metadata passes through minus the hop headers and the headers
that claim a client identity (`IDENTITY_HEADERS`: a caller could write them, and an app moved behind the mesh from
a proxy that set them might trust them; the caller's verified identity is the mesh's to check), and the app's
initial metadata, messages, trailers, code and details (``grpc-status-details-bin`` included) reach the caller
unchanged. The app's call carries what is left of the caller's deadline. Cancellation crosses both ways: a
caller that goes away cancels the app's call, and an app that ends its call early ends the caller's. A unary
method whose kind the listener knows takes `unary`, a unary call to the app, instead of the stream relay.

Two answers are the sidecar's own. A call is started only once the channel to the app has a connection; when
none can be made, the app never saw the call, and the sidecar says so (NO_HEALTHY_ENDPOINT naming the app and
the method), which lets a meshlet caller re-send it elsewhere whatever the method. Whatever the app answers is
its answer, never "not reached", whatever its text says; but an app that passes on a refusal of its own
outbound call (a status carrying meshlet's ErrorInfo) is answered as UPSTREAM_FAILED, as the SDK's server
does (meshlet.errors.upstream_failed): the caller's mesh must neither retry this instance for it nor count
it against its breaker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

import grpc
from opentelemetry.context import get_current
from opentelemetry.trace import get_current_span

from meshlet.call import InboundCall
from meshlet.errors import ErrorReason, NoHealthyEndpoint, error_info, upstream_failed
from meshlet.telemetry.propagation import headers, trace_fields, without
from meshlet.transport.channels import NO_GRPC_RETRIES, NotConnected, wait_connected
from meshlet.transport.raw import HOP_HEADERS, MAX_CACHED_METHODS, abort_with, forwardable, relay_status
from meshlet.transport.streams import pump_requests, settled

log = logging.getLogger("meshlet.sidecar")


# Set by TLS-terminating proxies to tell the app who the client was: Envoy's and Istio's XFCC, RFC 9440's fields,
# nginx's and HAProxy's usual names. Only the hop that verified the certificate may write them, never a caller.
IDENTITY_HEADERS = frozenset(
    {
        "x-forwarded-client-cert",
        "client-cert",
        "client-cert-chain",
        "x-client-cert",
        "x-client-verify",
        "x-client-dn",
        "x-ssl-client-cert",
        "x-ssl-client-verify",
        "x-ssl-client-dn",
        "x-ssl-client-s-dn",
        "x-ssl-client-i-dn",
        "ssl-client-cert",
        "ssl-client-verify",
        "x-spiffe-id",
    }
)
_TO_APP_DROPPED = HOP_HEADERS | IDENTITY_HEADERS

_APP_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    *NO_GRPC_RETRIES,  # the calling side owns retries; grpcio's own stay off on this hop too
    # The app is on localhost: after it restarts, reconnect within a second, not grpc's backoff of up to 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class ForwardToApp:
    """``await forward(call)`` gives the app's reply stream for one inbound call; the caller's context receives
    the app's metadata and status as a side effect of iterating it. Close it after the listener has stopped."""

    __slots__ = ("_calls", "_channel", "_trace_fields", "_unary_calls", "app_address")

    def __init__(self, app_address: str, *, propagate: bool = False) -> None:
        """With `propagate` (tracing on), the app receives the trace context of the sidecar's server span."""
        self.app_address = app_address
        self._trace_fields = trace_fields() if propagate else frozenset()
        self._channel: grpc.aio.Channel | None = None  # opened on first use, inside the event loop
        self._calls: dict[str, Any] = {}  # method path -> raw stream-stream multicallable
        self._unary_calls: dict[str, Any] = {}  # method path -> raw unary-unary multicallable

    async def __call__(self, call: InboundCall) -> AsyncGenerator[bytes, None]:
        return self._relay(call)

    async def _relay(self, call: InboundCall) -> AsyncGenerator[bytes, None]:
        context = call.context
        deadline = call.deadline
        await self._connected(call)
        app_call = self._multicallable(call.method)(
            timeout=None if deadline is None else deadline.remaining(), metadata=self._metadata(call)
        )
        handler = asyncio.current_task()
        assert handler is not None
        sending = asyncio.create_task(pump_requests(call.request, app_call, handler))
        app_call.add_done_callback(lambda _: sending.cancel())  # no write may start once the app has answered
        try:
            headers = await app_call.initial_metadata()
            if headers:
                await context.send_initial_metadata(forwardable(headers))
            async for reply in app_call:  # not read(): it stops at CORE_WRITE_RACE and leaves the app's replies unread
                yield reply
        except grpc.aio.AioRpcError as failed:
            answer = await settled(app_call, failed)  # the app's own status, not grpc's write-race placeholder
            if answer.code() is not grpc.StatusCode.OK:
                await abort_with(context, as_sidecars_answer(answer))
        finally:  # the caller went away, the app ended first, or the relay failed: nothing may outlive the call
            sending.cancel()
            app_call.cancel()  # a no-op once the app's call has ended, so its status below stays the app's
        await relay_status(context, app_call)

    async def unary(self, call: InboundCall) -> bytes | None:
        """A unary call: the app's reply; its metadata and status reach the caller's context on the way."""
        context = call.context
        await self._connected(call)
        timeout = None if call.deadline is None else call.deadline.remaining()
        app_call = self._unary_multicallable(call.method)(call.request, timeout=timeout, metadata=self._metadata(call))
        try:
            reply: bytes = await app_call  # a caller that goes away cancels this await, and with it the app's call
        except grpc.aio.AioRpcError as failed:
            initial = failed.initial_metadata()
            if initial:
                await context.send_initial_metadata(forwardable(initial))
            await abort_with(context, as_sidecars_answer(failed))
            return None  # pragma: no cover - abort raises
        initial = await app_call.initial_metadata()
        if initial:
            await context.send_initial_metadata(forwardable(initial))
        trailers = await app_call.trailing_metadata()
        if trailers:
            context.set_trailing_metadata(forwardable(trailers))
        return reply

    def _metadata(self, call: InboundCall) -> tuple[tuple[str, Any], ...]:
        """The caller's metadata minus the hop and identity headers. With tracing on, the caller's trace context is
        replaced by the current one, the sidecar's server span (inbound/span.py): the app's spans are its children."""
        metadata = forwardable(call.metadata, _TO_APP_DROPPED)
        if self._trace_fields and get_current_span().is_recording():  # else the caller's context goes on as it came
            metadata = (*without(metadata, self._trace_fields), *headers(get_current()))
        return metadata

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel to the app, opened on first use (inside the event loop)."""
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.app_address, options=_APP_CHANNEL_OPTIONS)
        return self._channel

    def _multicallable(self, method: str) -> Any:
        found = self._calls.get(method)
        if found is None:
            found = self.channel.stream_stream(method, _registered_method=True)  # no serializers: bytes both ways
            if len(self._calls) < MAX_CACHED_METHODS:
                self._calls[method] = found
        return found

    def _unary_multicallable(self, method: str) -> Any:
        found = self._unary_calls.get(method)
        if found is None:
            found = self._unary_calls[method] = self.channel.unary_unary(method, _registered_method=True)
        return found

    async def _connected(self, call: InboundCall) -> None:
        """Return once the channel to the app has a connection; else refuse the call as never reached."""
        channel = self.channel
        if channel.get_state() is grpc.ChannelConnectivity.READY:
            return
        timeout = None if call.deadline is None else call.deadline.remaining()
        try:
            await wait_connected(channel, self.app_address, timeout, wait_for_ready=False)
        except NotConnected as failed:
            if failed.code() is not grpc.StatusCode.UNAVAILABLE:
                await abort_with(call.context, failed)
            await abort_with(call.context, self._unreachable(call.method, failed))

    def _unreachable(self, method: str, failed: grpc.aio.AioRpcError) -> NoHealthyEndpoint:
        """The app never saw the call: no connection to it could be made. The ErrorInfo names the app and the
        method, so a meshlet caller knows this very call was not executed and may re-send it elsewhere."""
        address = self.app_address
        return NoHealthyEndpoint(
            f"the app at {address} did not take the call ({failed.details()}): check that the app is running and "
            f"listening on {address} (sidecar.app, --app-addr)",
            metadata={"app": address, "method": method},
        )

    async def close(self) -> None:
        """Close the channel to the app; calls still in flight are cancelled."""
        channel, self._channel = self._channel, None
        self._calls.clear()
        self._unary_calls.clear()
        if channel is not None:
            await channel.close(grace=None)

    def __repr__(self) -> str:
        state = "connected" if self._channel is not None else "not yet used"
        return f"<ForwardToApp {self.app_address} ({state}, {len(self._calls) + len(self._unary_calls)} methods)>"


def as_sidecars_answer(failed: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """The app's failed answer as the caller gets it: as it is, unless it passes on a meshlet refusal of the
    app's own outbound call, which becomes UPSTREAM_FAILED (or stays the caller's own deadline)."""
    info = error_info(failed)
    if info is None or info.reason == ErrorReason.UPSTREAM_FAILED:
        return failed
    return upstream_failed(failed) or failed
