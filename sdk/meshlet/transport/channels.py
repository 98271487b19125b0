"""One grpc.aio channel per endpoint: created on first use, reused by every call. When its endpoint leaves the
passing set the channel waits a while for it to come back (a Consul flap), then closes once the calls in flight
on it have ended; a rotated certificate replaces every channel for new calls the same way. No call is ever cut
short by either. grpcio's own retries are switched off on every channel: meshlet's retry stage is the one layer
that owns retries. A call is started only on a connected channel (`wait_connected`): an attempt that could not
connect is the one attempt known never to have left."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import grpc

from meshlet.call import Cardinality, Method
from meshlet.endpoints import Endpoint

log = logging.getLogger("meshlet.transport")

CLOSE_GRACE_S = 30.0
"""How long a departed endpoint's channel (and its breaker, see meshlet.upstream) waits for the endpoint to come
back before it closes. It closes only once no call is in flight on it, however long that takes."""

DRAIN_LIMIT_S = 86_400.0
"""How long a closing channel waits for its calls to end on their own: a day, the deadline meshlet gives a
stream whose caller set none, so only a call its caller gave a longer deadline can be ended by the mesh
(with UNAVAILABLE, reason CHANNEL_CLOSED)."""

Options = tuple[tuple[str, Any], ...]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the app, not the mesh, decides what is too big

# One layer owns retries (meshlet's retry stage): no service-config retry policy may ever apply on any channel
# meshlet opens, and no transparent retries behind its back.
NO_GRPC_RETRIES: Options = (
    ("grpc.enable_retries", 0),
    ("grpc.service_config", json.dumps({"methodConfig": []})),
    ("grpc.service_config_disable_resolution", 1),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)

KEEPALIVE_TIME_MS = 5_000
"""How often a channel pings its endpoint, busy or idle. A connection whose packets vanish (a black hole: no RST,
no FIN) is declared dead after at most KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS, its calls fail as UNAVAILABLE and
count against the endpoint's breaker; without pings TCP would retransmit into the void for ~15 minutes."""

KEEPALIVE_TIMEOUT_MS = 5_000
"""How long a ping may wait for its ack: well above any sane round trip, even over a congested link."""

_CHANNEL_OPTIONS: Options = (
    *NO_GRPC_RETRIES,
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),  # an idle connection is checked too: the next call finds it alive
    ("grpc.http2.max_pings_without_data", 0),
)

# Per connection: a client asking 10,000 gets 500 and REFUSED_STREAM past them, so that one connection holds at
# most half of an upstream's default bulkhead (upstreams.*.max_in_flight 1000) and others still get through.
MAX_CONCURRENT_STREAMS = 500
MAX_METADATA_BYTES = 16 * 1024  # a call's headers (and trailers) in all: past it, RESOURCE_EXHAUSTED, every time
CONNECTION_AGE_MS = 30 * 60_000  # then GOAWAY: clients open a new connection for new calls, and rebalance
# No max_connection_age_grace: calls in flight on an old connection, long-lived streams included, run to their end.

# What every meshlet server (the SDK's and the sidecar's inbound and outbound) accepts; the README's "Limits" and
# "Keepalive" say why. meshlet's channels ping every KEEPALIVE_TIME_MS, with or without calls; grpc's defaults (no
# pings without calls, at most one every 5 minutes without data) would answer them with GOAWAY too_many_pings. A
# client pinging faster than that without data gets two strikes, then GOAWAY. The soft and hard metadata limits are
# one, so that a call past it always fails (between the two, grpc refuses a random share of calls).
SERVER_OPTIONS: Options = (
    ("grpc.so_reuseport", 0),  # a port is one server's: a second one fails to start instead of sharing the calls
    # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: below the clients' interval, so timer jitter earns
    # no strike.
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS - 1_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
    ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.max_connection_age_ms", CONNECTION_AGE_MS),
)

COMPRESSION_ALGORITHMS = {"none": grpc.Compression.NoCompression, "gzip": grpc.Compression.Gzip}


def compression_options(name: str) -> Options:
    """Channel options that compress every message sent on the channel (``upstreams.<name>.compression``), as
    grpc's own ``compression=`` argument sets them (the replies are compressed as the server chooses)."""
    if name == "none":
        return ()
    return (("grpc.default_compression_algorithm", int(COMPRESSION_ALGORITHMS[name])),)


ChannelFactory = Callable[[str, tuple[tuple[str, Any], ...]], grpc.aio.Channel]


def insecure_channel(target: str, options: tuple[tuple[str, Any], ...]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=options)


class EndpointChannel:
    """A channel to one endpoint and the multicallables made on it, one per Method."""

    __slots__ = ("_callables", "channel", "endpoint")

    def __init__(self, endpoint: Endpoint, channel: grpc.aio.Channel) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self._callables: dict[Method, Any] = {}

    def is_ready(self) -> bool:
        """Whether the channel has a connection now: a call started on it may reach the server."""
        return self.channel.get_state() is grpc.ChannelConnectivity.READY

    async def connect(self, timeout_s: float, wait_for_ready: bool | None) -> None:
        """Wait until the channel has a connection; raise NotConnected if it cannot get one in time."""
        await wait_connected(self.channel, self.endpoint.authority, timeout_s, wait_for_ready)

    def callable_for(self, method: Method) -> Any:
        """The grpc multicallable for `method` on this channel (built once, then one dict lookup)."""
        found = self._callables.get(method)
        if found is None:
            found = self._callables[method] = _multicallable(self.channel, method)
        return found


def _multicallable(channel: grpc.aio.Channel, method: Method) -> Any:
    make = {
        Cardinality.UNARY_UNARY: channel.unary_unary,
        Cardinality.UNARY_STREAM: channel.unary_stream,
        Cardinality.STREAM_UNARY: channel.stream_unary,
        Cardinality.STREAM_STREAM: channel.stream_stream,
    }[method.kind]
    # Registered, as generated stubs do: grpc core then interns the method once instead of per call.
    return make(
        method.path,
        request_serializer=method.serializer,
        response_deserializer=method.deserializer,
        _registered_method=True,
    )


class EndpointChannels:
    """The channels of one upstream, keyed by endpoint: those in use, those whose endpoint left a moment ago
    (kept `close_grace_s` for its return), and those closing, which grpc closes once their calls have ended."""

    def __init__(
        self,
        factory: ChannelFactory = insecure_channel,
        extra_options: tuple[tuple[str, Any], ...] = (),
        *,
        close_grace_s: float | None = None,
    ):
        self._factory = factory
        self._options = _CHANNEL_OPTIONS + extra_options
        self.close_grace_s = CLOSE_GRACE_S if close_grace_s is None else close_grace_s
        self._channels: dict[Endpoint, EndpointChannel] = {}
        self._departed: dict[Endpoint, tuple[EndpointChannel, asyncio.TimerHandle]] = {}
        self._closing: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    def get(self, endpoint: Endpoint) -> EndpointChannel:
        found = self._channels.get(endpoint)
        if found is None:
            found = self._channels[endpoint] = self._returned(endpoint) or self._open(endpoint)
        return found

    def _open(self, endpoint: Endpoint) -> EndpointChannel:
        return EndpointChannel(endpoint, self._factory(endpoint.authority, self._options))

    def _returned(self, endpoint: Endpoint) -> EndpointChannel | None:
        """The channel of an endpoint that left and came back within the grace: its connection is still good."""
        departed = self._departed.pop(endpoint, None)
        if departed is None:
            return None
        found, timer = departed
        timer.cancel()
        return found

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, endpoint: Endpoint) -> bool:
        return endpoint in self._channels

    def refresh(self) -> None:
        """New credentials (a rotated certificate): new calls get new channels, and every call in flight runs to
        its end on the old one, which then closes."""
        for found in self._channels.values():
            self._close_when_idle(found.channel)
        for found, timer in self._departed.values():
            timer.cancel()
            self._close_when_idle(found.channel)
        self._channels = {}
        self._departed = {}

    def retire(self, endpoint: Endpoint) -> None:
        """The endpoint left the passing set: new calls stop using its channel. Should the endpoint come back
        within `close_grace_s`, it gets the channel back; otherwise the channel closes once its calls end."""
        found = self._channels.pop(endpoint, None)
        if found is not None:
            timer = asyncio.get_running_loop().call_later(self.close_grace_s, self._forget, endpoint)
            self._departed[endpoint] = (found, timer)

    def _forget(self, endpoint: Endpoint) -> None:
        departed = self._departed.pop(endpoint, None)
        if departed is not None:
            self._close_when_idle(departed[0].channel)

    def _close_when_idle(self, channel: grpc.aio.Channel) -> None:
        """Take no new calls on `channel` and close it as soon as the calls in flight on it have ended (grpc
        waits for each to finish, up to DRAIN_LIMIT_S)."""
        task = asyncio.get_running_loop().create_task(channel.close(grace=DRAIN_LIMIT_S))
        self._closing[task] = channel
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.pop(task, None)

    async def close(self) -> None:
        """Close every channel now: calls still in flight end with UNAVAILABLE (CHANNEL_CLOSED)."""
        channels = [found.channel for found in self._channels.values()]
        for found, timer in self._departed.values():
            timer.cancel()
            channels.append(found.channel)
        waiting = list(self._closing)
        for task in waiting:
            task.cancel()  # stops waiting for its calls; closing its channel again below ends them
            channels.append(self._closing[task])
        self._channels, self._departed, self._closing = {}, {}, {}
        await asyncio.gather(*waiting, return_exceptions=True)
        await asyncio.gather(*(channel.close(grace=None) for channel in channels), return_exceptions=True)


class NotConnected(grpc.aio.AioRpcError):
    """An attempt that ended before its call was started: no connection to the endpoint could be made, so no
    byte of the request left this process, and re-sending it elsewhere is always safe (gRPC A6)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


# A method no server has: what `why_not_connected` calls to read grpc core's words.
CONNECTION_PROBE = "/meshlet.transport.v1.Transport/ConnectionProbe"


async def why_not_connected(channel: grpc.aio.Channel) -> str:
    """grpc core's own words for a channel's failed connection ("Connection refused", a TLS handshake that
    failed...), for the message and the TLS metrics: Python reads them only from a call's status. A call to a
    method no server has, on a channel in TRANSIENT_FAILURE, fails at once with them; should the channel have
    connected meanwhile, the probe reaches the server and is refused UNIMPLEMENTED, and nothing runs. Only the
    words come from here: that the attempt was not sent is known from the channel's state."""
    try:
        await channel.unary_unary(CONNECTION_PROBE, _registered_method=True)(b"", timeout=1.0, wait_for_ready=False)
    except grpc.aio.AioRpcError as failed:
        if failed.code() is grpc.StatusCode.UNAVAILABLE:
            return failed.details() or ""
    return ""


async def wait_connected(
    channel: grpc.aio.Channel, authority: str, timeout_s: float | None, wait_for_ready: bool | None
) -> None:
    """Return once `channel` is READY; raise NotConnected when it cannot be (a failed connection, unless the
    caller asked to wait for one, or the deadline passing first).

    Why not just start the call: grpcio tells Python nothing about where a failed call's bytes went, and the
    text of a status proves nothing (a server writes its own). A call started only on a READY channel, and one
    refused before it was started, are the only facts Python has. A connection that breaks under a call is
    then "possibly executed", which is what it is.
    """
    loop = asyncio.get_running_loop()
    give_up = None if timeout_s is None else loop.time() + timeout_s
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.SHUTDOWN or (
            state is grpc.ChannelConnectivity.TRANSIENT_FAILURE and not wait_for_ready
        ):
            failed = state is grpc.ChannelConnectivity.TRANSIENT_FAILURE
            why = (await why_not_connected(channel) if failed else "") or state.name
            raise NotConnected(  # grpc's words last, as grpc ends its own (meshlet.security.handshake_failures)
                grpc.StatusCode.UNAVAILABLE, f"could not connect to {authority}, the request was not sent: {why}"
            )
        left = None if give_up is None else give_up - loop.time()
        if left is not None and left <= 0:
            raise NotConnected(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the deadline passed while connecting to {authority}; the request was not sent",
            )
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), left)
        except TimeoutError:
            pass
        state = channel.get_state(try_to_connect=True)
