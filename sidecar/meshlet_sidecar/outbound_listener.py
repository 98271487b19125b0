"""The app's way out: 127.0.0.1:15001 (routed by gRPC service) and one port per upstream with a
``local_port``. Each call, as raw bytes, runs through the upstream's outbound pipeline (the same
``Upstream.handler`` the SDK's MeshChannel feeds), and its reply stream, metadata and status come back unchanged.

grpcio's server does not say which of its ports a call arrived on, so each listening address is its own server,
bound to one fixed upstream (a local port) or to the route map (the shared port).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import grpc

from meshlet.call import Call, Cardinality, Method
from meshlet.transport.raw import RawHandler, RawMethods, abort_with, forwardable, relay_status
from meshlet.transport.streams import ReplayableRequests
from meshlet.upstream import Upstream
from meshlet_sidecar.routing import Routes

log = logging.getLogger("meshlet.sidecar")


class OutboundListener:
    """One listening address of the outbound side."""

    def __init__(
        self,
        address: str,
        *,
        routes: Routes,
        upstream: Callable[[str], Upstream],
        is_idempotent: Callable[[str, str], bool],
        replay_limit_bytes: Callable[[str], int],
        fixed_upstream: str | None = None,
    ) -> None:
        self.address = address
        self.fixed_upstream = fixed_upstream
        self._routes = routes
        self._upstream = upstream
        self._is_idempotent = is_idempotent
        self._replay_limit = replay_limit_bytes
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.in_flight = 0

    async def start(self) -> int:
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._server.add_generic_rpc_handlers((RawMethods(self._handler_for),))
        self.port = self._server.add_insecure_port(self.address)
        if not self.port:
            raise OSError(f"cannot listen on {self.address}")
        await self._server.start()
        return self.port

    async def stop(self, grace_s: float | None) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)

    def _handler_for(self, method: str) -> RawHandler:
        """The handler for one method path, built once: the route and the Method are decided here, not per call."""
        upstream_name = self.fixed_upstream or self._routes.route(method)
        if upstream_name is None:
            explanation = self._routes.explain_miss(method)

            async def unrouted(request_iterator: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
                await context.abort(grpc.StatusCode.UNAVAILABLE, explanation)
                yield b""  # pragma: no cover - abort raises

            return unrouted
        upstream = self._upstream(upstream_name)
        described = Method(method, Cardinality.STREAM_STREAM, self._is_idempotent(upstream_name, method))
        replay_limit = self._replay_limit(upstream_name)
        pipeline = upstream.handler
        default_timeout_s = upstream.policy.timeout

        async def proxy(request_iterator: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            self.in_flight += 1
            try:
                call = Call(
                    upstream_name,
                    described,
                    ReplayableRequests(request_iterator, replay_limit),
                    forwardable(context.invocation_metadata()),
                    _timeout_or(context.time_remaining(), default_timeout_s),
                )
                try:
                    stream = await pipeline(call)
                    initial = await stream.initial_metadata()
                    if initial:
                        await context.send_initial_metadata(forwardable(initial))
                    async with aclosing(stream.messages()) as messages:  # an app that leaves cancels the call
                        async for message in messages:
                            yield message
                except grpc.aio.AioRpcError as error:
                    await abort_with(context, error)
                    return
                await relay_status(context, stream)
            finally:
                self.in_flight -= 1

        return proxy


def _timeout_or(remaining: float | None, default_s: float) -> float:
    """The app's deadline, else the upstream's ``timeout``: the sidecar cannot tell a unary method from a stream
    (every call is proxied as a stream), so an app's long-lived streams need a deadline of their own or a longer
    ``upstreams.<name>.timeout``."""
    return default_s if remaining is None else remaining
