"""Where the L4 hop sends the connections it refuses, so their callers get an answer instead of a closed socket.

A closed connection reads to a gRPC client as "never reached a server": UNAVAILABLE, which a mesh client retries
until its deadline, and no word of why. So the splice hands a refused connection's decrypted bytes to this small
grpc.aio server on loopback (no app involved) and it answers every call with the L7 inbound pipeline's own
refusal stages: IdentifyPeer (UNAUTHENTICATED), Authorize (PERMISSION_DENIED with INTENTION_DENIED) and
CountRefusals (the denial metrics and access log), exactly as the L7 listener does.

The caller's identity cannot travel in the bytes (HTTP/2 is not rewritten at L4): the splice tells this server
which loopback port stands for which TLS connection before it writes a byte, and the server reads it back from
the call's peer address. A process on this host that dials the server directly has no such entry: it is a call
without an identity and gets UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from meshlet.call import InboundCall
from meshlet.deadline import Clock
from meshlet.errors import MeshError
from meshlet.inbound import InboundParts, build_inbound
from meshlet.security.intentions import service_of
from meshlet.transport.raw import Built, RawHandler, RawMethods, generic_handler, read_to_half_close
from meshlet.transport.server import abort_refused, inbound_call

LOOPBACK = "127.0.0.1"


@dataclass(eq=False)
class RefusedConnection:
    """One caller's TLS connection, as the refusal server sees it: who presented it and from where."""

    caller: str | None  # the caller's SPIFFE ID, None when its certificate names none we accept
    peer_address: str  # the caller's address, for the log and the access log (not the loopback hop's)
    refusal: str | None = None  # why its certificate names no caller we accept (IdentifyPeer says so)
    reauthorized: asyncio.Event = field(default_factory=asyncio.Event)  # a call got through: the intentions changed


class RefusalServer:
    """A plaintext grpc.aio server on a loopback port: every method, as raw bytes, through the refusal stages of
    `parts` (rate limits and tracing left out: a refused call spends no token and costs no span)."""

    def __init__(self, parts: InboundParts, clock: Clock) -> None:
        self.port = 0
        self._parts = dataclasses.replace(parts, per_caller=None, per_method=None, tracer=None)
        self._clock = clock
        self._connections: dict[str, RefusedConnection] = {}  # grpc's peer string -> the connection it stands for
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        server = grpc.aio.server(options=(("grpc.so_reuseport", 0),))
        server.add_generic_rpc_handlers((RawMethods(self._handler_for),))
        port: int = server.add_insecure_port(f"{LOOPBACK}:0")
        if not port:
            await server.stop(None)
            raise OSError(f"cannot listen on {LOOPBACK} for the L4 hop's refusals: no free loopback port")
        await server.start()
        self._server, self.port = server, port
        return port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0)
        self._connections.clear()

    def expect(self, local_port: int, connection: RefusedConnection) -> None:
        """The splice dialled us from `local_port` on behalf of `connection`: call before writing a byte."""
        self._connections[f"ipv4:{LOOPBACK}:{local_port}"] = connection

    def forget(self, local_port: int) -> None:
        self._connections.pop(f"ipv4:{LOOPBACK}:{local_port}", None)

    def _handler_for(self, method: str) -> Built:
        return generic_handler(self._refuse(method)), None, False

    def _refuse(self, method: str) -> RawHandler:
        pipeline = build_inbound(self._passed, self._parts, method)
        clock = self._clock

        async def refuse(requests: AsyncIterator[bytes], context: Any) -> None:
            call = inbound_call(method, requests, context, clock, None)
            connection = self._connections.get(context.peer())
            if connection is not None:
                call.peer_uri, call.peer_address = connection.caller, connection.peer_address
                call.peer_refusal = connection.refusal
            try:
                await pipeline(call)
            except MeshError as refused:
                await abort_refused(context, refused, requests)

        return refuse

    async def _passed(self, call: InboundCall) -> None:
        """The stages let a call through: the intentions changed since its connection was refused. That
        connection's decision is stale; the splice closes it once quiet, and the caller's next one is judged
        afresh."""
        connection = self._connections.get(call.context.peer())
        if connection is not None:
            connection.reauthorized.set()
        caller = service_of(call.peer_uri) or call.peer_uri
        await read_to_half_close(call.request)  # as abort_refused does: the caller reads this answer, not INTERNAL
        await call.context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"{caller} -> {self._parts.service} was denied when this connection opened and is allowed now: call "
            "again (the connection is closed and a new one is authorized afresh)",
        )
