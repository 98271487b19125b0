"""The way in: the sidecar's inbound port (15006), where other services' sidecars and SDKs call this app over
mTLS. Every method is served as raw bytes; each call runs the SDK's inbound pipeline (identity, intentions,
rate limits, deadline) and ends in ForwardToApp, which hands it to the local app. A unary method whose kind the
app's MethodTable knows (descriptor sets, the app's reflection service) is served as unary, any other as a
stream. With ``inbound.validate: true`` a unary method's request is checked against its proto's buf.validate
constraints, decoded with the message type the table learnt; a method whose descriptor is not known yet, and any
stream, passes unvalidated.

What a caller sees is what the app answered, except for calls the mesh itself refuses: a stage's MeshError
ends the call with its code, message and ErrorInfo (a stream's once its requests are read, so that the caller
reads the refusal and not grpc's INTERNAL: transport/server.py). Whatever a client sends, garbage or a stream it
abandons, ends that one call; grpc logs it, and the listener goes on serving the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import grpc

from meshlet.call import Cardinality
from meshlet.deadline import Clock
from meshlet.errors import CannotListen, MeshError
from meshlet.inbound import InboundParts, build_inbound
from meshlet.inbound.abandoned import mark_abandoned
from meshlet.security.certs import CertificateSource, server_credentials
from meshlet.security.peers import CallerIdentities, PeerVerdict
from meshlet.transport.channels import SERVER_OPTIONS
from meshlet.transport.listen import add_port
from meshlet.transport.raw import Built, RawHandler, RawMethods, RawUnaryHandler, generic_handler, unary_handler
from meshlet.transport.server import abort_refused, inbound_call
from meshlet.validation import parse_as
from meshlet_sidecar.forward import ForwardToApp
from meshlet_sidecar.method_kinds import MethodTable


class InboundListener:
    """One grpc.aio server on `address`: mTLS with `source`'s certificates (plaintext when `source` is None, for
    meshes with ``tls.source: off``). Start the source before `start()`; close `forward` after `stop()`."""

    def __init__(
        self,
        address: str,
        *,
        source: CertificateSource | None,
        parts: InboundParts,
        forward: ForwardToApp,
        clock: Clock,
        methods: MethodTable | None = None,
    ) -> None:
        self.address = address
        self.port = 0
        self.in_flight = 0  # calls between arrival and their last reply: what a drain waits for
        self.unary_calls = 0  # calls served by a unary handler (the method's kind known) ...
        self.generic_calls = 0  # ... and by the generic stream-stream one
        self.methods = methods
        self._source = source
        self._parts = parts
        self._forward = forward
        self._clock = clock
        self._server: grpc.aio.Server | None = None
        self._identify: Callable[[Any], PeerVerdict] | None = (
            CallerIdentities(source, parts.trusted_domains).of_call if source is not None else None
        )

    async def start(self) -> int:
        """Bind and serve; returns the port (useful with port 0). Raises CannotListen when the port is taken."""
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers((RawMethods(self._handler_for),))
        credentials = server_credentials(self._source) if self._source is not None else None
        fix = "set sidecar.inbound (--inbound-addr) to a free local address"
        try:
            port = add_port(server, self.address, credentials, what="listen for inbound calls", fix=fix)
        except CannotListen:
            await server.stop(None)
            raise
        await server.start()
        self._server, self.port = server, port
        return port

    async def stop(self, grace_s: float | None) -> None:
        """Refuse new calls at once; let those in flight finish for up to `grace_s`, then cancel them."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)

    def _handler_for(self, method: str) -> Built:
        """One method's handler, built once per method path (again whenever the app's table learns something): its
        pipeline over ForwardToApp."""
        methods = self.methods
        known = methods.get(method) if methods is not None else None
        if known is not None and known.kind is Cardinality.UNARY_UNARY:
            return unary_handler(self._unary(method, known.request_type)), methods, False
        return generic_handler(self._generic(method)), methods, known is None

    def _unary(self, method: str, request_type: type[Any] | None = None) -> RawUnaryHandler:
        # inbound.validate decodes the request with the type the method table learnt; unknown: not validated
        decode = parse_as(request_type) if request_type is not None else None
        pipeline = build_inbound(self._forward.unary, self._parts, method, decode)
        clock = self._clock
        identify = self._identify

        async def forward(request: bytes, context: Any) -> bytes | None:
            self.in_flight += 1
            self.unary_calls += 1
            try:
                reply: bytes | None = await pipeline(inbound_call(method, request, context, clock, identify))
                return reply
            except MeshError as refused:
                await abort_refused(context, refused)
                return None
            finally:
                self.in_flight -= 1

        return forward

    def _generic(self, method: str) -> RawHandler:
        pipeline = build_inbound(self._forward, self._parts, method, decode=None)  # streams: not validated
        clock = self._clock
        identify = self._identify

        async def forward(requests: AsyncIterator[bytes], context: Any) -> None:
            self.in_flight += 1
            self.generic_calls += 1
            try:
                try:
                    replies = await pipeline(inbound_call(method, requests, context, clock, identify))
                except MeshError as refused:
                    await abort_refused(context, refused, requests)
                    return
                async with aclosing(replies):  # a caller that leaves mid-reply closes the relay, cancelling the app
                    async for reply in replies:
                        await context.write(reply)
            except asyncio.CancelledError:  # the caller went away: grpc.aio tells the done callbacks nothing
                mark_abandoned(context)
                raise
            finally:
                self.in_flight -= 1

        return forward

    def __repr__(self) -> str:
        security = "mTLS" if self._source is not None else "plaintext"
        where = f"{self.address} (port {self.port})" if self.port else self.address
        return f"<InboundListener {where} {security} -> app {self._forward.app_address}: {self.in_flight} in flight>"
