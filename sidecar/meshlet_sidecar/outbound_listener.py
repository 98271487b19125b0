"""The app's way out: 127.0.0.1:15001 (routed by gRPC service) and one port per upstream with a
``local_port``. Each call, as raw bytes, runs through the upstream's outbound pipeline (the same
``Upstream.handler`` the SDK's MeshChannel feeds), and its reply stream, metadata and status come back unchanged.
A unary method whose kind the upstream's MethodTable knows (descriptor sets, the upstream's reflection service)
is served as unary and sent as a unary call, any other as a stream.

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
from meshlet.errors import CannotListen
from meshlet.transport.channels import SERVER_OPTIONS
from meshlet.transport.listen import add_port
from meshlet.transport.raw import (
    Built,
    RawHandler,
    RawMethods,
    RawUnaryHandler,
    abort_with,
    forwardable,
    generic_handler,
    relay_status,
    unary_handler,
)
from meshlet.transport.streams import ReplayableRequests
from meshlet.upstream import Upstream
from meshlet_sidecar.method_kinds import MethodTable
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
        methods: Callable[[str], MethodTable | None] = lambda _upstream: None,
    ) -> None:
        self.address = address
        self.fixed_upstream = fixed_upstream
        self._routes = routes
        self._upstream = upstream
        self._is_idempotent = is_idempotent
        self._replay_limit = replay_limit_bytes
        self._methods = methods
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.in_flight = 0
        self.unary_calls = 0  # calls served by a unary handler (the method's kind known) ...
        self.generic_calls = 0  # ... and by the generic stream-stream one
        self.unrouted_calls = 0  # calls for no known upstream, answered UNAVAILABLE here (outside every pipeline)

    @property
    def arrived(self) -> int:
        """Every call that came in so far: a drain that sees it unchanged knows that no new call came."""
        return self.unary_calls + self.generic_calls + self.unrouted_calls

    async def start(self) -> int:
        # The same options as every meshlet server (an app's big messages and keepalive pings are its business).
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers((RawMethods(self._handler_for),))
        if self.fixed_upstream is None:
            what, fix = "listen for the app's outbound calls", "set sidecar.outbound (--outbound-addr) to a free port"
        else:
            name = self.fixed_upstream
            what = f"listen for calls to {name}"
            fix = f"set upstreams.{name}.local_port (--upstream {name}=PORT) to a free one"
        try:
            self.port = add_port(server, self.address, None, what=what, fix=fix)
        except CannotListen:
            await server.stop(None)
            raise
        self._server = server
        await server.start()
        return self.port

    async def stop(self, grace_s: float | None) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)

    def _handler_for(self, method: str) -> Built:
        """The handler for one method path, built once (again whenever its upstream's table learns something): the
        route, the Method and the kind are decided here, not per call."""
        upstream_name = self.fixed_upstream or self._routes.route(method)
        if upstream_name is None:
            explanation = self._routes.explain_miss(method)
            log.warning("no route for %s: %s", method, explanation)  # once per method: this handler is final

            async def unrouted(request_iterator: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
                self.unrouted_calls += 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, explanation)
                yield b""  # pragma: no cover - abort raises

            return generic_handler(unrouted), None, False
        methods = self._methods(upstream_name)
        known = methods.get(method) if methods is not None else None
        idempotent = self._is_idempotent(upstream_name, method) or (known is not None and known.idempotent)
        if known is not None and known.kind is Cardinality.UNARY_UNARY:
            described = Method(method, Cardinality.UNARY_UNARY, idempotent)
            return unary_handler(self._unary(upstream_name, described)), methods, False
        described = Method(method, Cardinality.STREAM_STREAM, idempotent)
        # A stream the app gave no deadline runs unbounded only when it is known to be a stream (see _timeout_or).
        default_timeout_s = None if known is not None else self._upstream(upstream_name).policy.timeout
        return generic_handler(self._generic(upstream_name, described, default_timeout_s)), methods, known is None

    def _unary(self, upstream_name: str, described: Method) -> RawUnaryHandler:
        pipeline = self._upstream(upstream_name).handler

        async def proxy(request: bytes, context: Any) -> bytes | None:
            self.in_flight += 1
            self.unary_calls += 1
            try:
                call = Call(
                    upstream_name,
                    described,
                    request,
                    forwardable(context.invocation_metadata()),
                    context.time_remaining(),  # None: ApplyDeadline gives it the upstream's timeout
                )
                try:
                    reply: bytes = await pipeline(call)
                except grpc.aio.AioRpcError as error:
                    initial = error.initial_metadata()
                    if initial:
                        await context.send_initial_metadata(forwardable(initial))
                    await abort_with(context, error)
                    return None  # pragma: no cover - abort raises
                sent = call.transport_call  # the attempt that answered
                initial = await sent.initial_metadata()
                if initial:
                    await context.send_initial_metadata(forwardable(initial))
                trailers = await sent.trailing_metadata()
                if trailers:
                    context.set_trailing_metadata(forwardable(trailers))
                return reply
            finally:
                self.in_flight -= 1

        return proxy

    def _generic(self, upstream_name: str, described: Method, default_timeout_s: float | None) -> RawHandler:
        upstream = self._upstream(upstream_name)
        replay_limit = self._replay_limit(upstream_name)
        pipeline = upstream.handler

        async def proxy(request_iterator: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            self.in_flight += 1
            self.generic_calls += 1
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


def _timeout_or(remaining: float | None, default_s: float | None) -> float | None:
    """The app's deadline, else `default_s`: the upstream's ``timeout`` for a method whose kind is unknown (it may
    be unary), None for a known stream (ApplyDeadline then lets it run, as the SDK does). So an app's long-lived
    streams of unknown kind need a deadline of their own or a longer ``upstreams.<name>.timeout``."""
    return default_s if remaining is None else remaining
