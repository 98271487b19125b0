"""The L4 inbound hop (``sidecar.inbound_mode: l4``): terminate mTLS, authorize the caller's service identity
once per connection, then splice the bytes to the app without parsing gRPC, as Consul's L4 intentions do.

Only for a port whose authorization is by identity alone: no per-method intention and no rate limit (the config
refuses l4 otherwise), since neither can be decided without reading the calls. A refused connection (an intention
denies its caller, or its certificate names no service) is not closed, which a client would take for "never
reached a server" and retry until its deadline: its bytes go to the RefusalServer, which answers each of its calls
with the L7 pipeline's own PERMISSION_DENIED (ErrorInfo INTENTION_DENIED) or UNAUTHENTICATED, and logs and counts
it as L7 does. Every connection is counted by caller and outcome (``meshlet_l4_connections_total``).

What it gives up against the L7 listener: no per-call tracing, metrics or access log for the calls it lets
through; a drain cannot send GOAWAY, so on stop the listener waits for its connections to go quiet (no byte for
`QUIET_S`), up to the grace period, then closes them. What it wins: the per-call cost of grpc's server and client
machinery on this hop.

Python's ssl loads a certificate chain and its key only from files. The private key never touches a disk: it is
written to an anonymous in-memory file (``memfd_create``) that OpenSSL opens through ``/proc/self/fd`` and that
disappears when closed, a moment later, or with the process, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Coroutine, Iterator
from typing import Any

from meshlet.config import listen_host, split_host_port
from meshlet.deadline import Clock
from meshlet.errors import CannotListen, describe_os_error
from meshlet.inbound import InboundParts
from meshlet.security.certs import CertificateSource, TlsMaterial
from meshlet.security.intentions import service_of
from meshlet.security.peers import CallerIdentities
from meshlet.telemetry.metrics import caller_label
from meshlet_sidecar.refusal import LOOPBACK, RefusalServer, RefusedConnection

log = logging.getLogger("meshlet.sidecar")

CHUNK_BYTES = 256 * 1024
HANDSHAKE_TIMEOUT_S = 10.0
# TLS's close waits for the peer's close_notify, which grpc clients do not send (grpcio 1.85, observed): unbounded, a
# caller whose connection we close keeps sending calls into it for ssl's default 30 s before it dials again.
SHUTDOWN_TIMEOUT_S = 1.0
QUIET_S = 1.0  # on stop, a connection with no byte for this long has nothing in flight worth waiting for
STALE_QUIET_S = 0.2  # a refused connection the intentions now allow is closed once its answers are out
ANY_METHOD = "*"  # l4 ports have no per-method intention, so one decision covers every method


class SpliceListener:
    """One TCP server on `address`: mTLS with `source`'s current certificate (new connections pick up a rotation),
    an identity check and one authorization per connection (`parts`' authorizer), then bytes both ways to the app
    at `app_address`, or, for a refused connection, to a RefusalServer over the same `parts`."""

    def __init__(
        self,
        address: str,
        *,
        source: CertificateSource,
        parts: InboundParts,
        app_address: str,
        clock: Clock,
    ) -> None:
        self.address = address
        self.port = 0
        self.app_address = app_address
        self.unary_calls = 0  # calls are not seen at L4: the per-handler counters stay at zero
        self.generic_calls = 0
        self.connections = 0  # accepted and spliced since start
        self._source = source
        self._parts = parts
        self._authorizer = parts.authorizer
        self._identities = CallerIdentities(source, parts.trusted_domains)
        self._service = parts.service
        self._counted = parts.metrics.l4_connections if parts.metrics is not None else None
        self._clock = clock
        self._refusals: tuple[RefusalServer, asyncio.Task[int]] | None = None  # started at the first refusal
        self._stopping = False
        self._server: asyncio.Server | None = None
        self._open: dict[asyncio.Task[None], float] = {}  # connection -> when it last moved a byte
        self._context: tuple[TlsMaterial, ssl.SSLContext] | None = None

    @property
    def in_flight(self) -> int:
        """Open connections: a call's connection, not its calls (they are not seen at L4)."""
        return len(self._open)

    async def start(self) -> int:
        host, port = split_host_port(self.address)
        context = self._tls_context()  # its sni_callback hands every handshake the current certificate
        try:
            server = await asyncio.start_server(
                self._accept,
                listen_host(host),
                port,
                ssl=context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
                ssl_shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                reuse_address=True,
            )
        except OSError as error:
            fix = "set sidecar.inbound (--inbound-addr) to a free local address"
            problem = describe_os_error(error)
            message = f"cannot listen for inbound calls on {self.address} ({problem}): {fix}"
            raise CannotListen(message, address=self.address) from None
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self, grace_s: float | None) -> None:
        """Refuse new connections at once; wait (up to `grace_s`) until the open ones have gone quiet, then close
        them."""
        self._stopping = True  # a handshake still under way completes after close(): its connection is refused
        server, self._server = self._server, None
        if server is not None:
            server.close()
        give_up = time.monotonic() + (grace_s or 0.0)
        while self._open and time.monotonic() < give_up:
            if all(time.monotonic() - moved >= QUIET_S for moved in self._open.values()):
                break
            await asyncio.sleep(0.05)
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        refusals, self._refusals = self._refusals, None
        if refusals is not None:
            await asyncio.gather(refusals[1], return_exceptions=True)
            await refusals[0].stop()

    # ------------------------------------------------------------------ one connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stopping:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = time.monotonic()
        peer = writer.get_extra_info("peername")
        try:
            await self._serve(reader, writer, f"{peer[0]}:{peer[1]}" if peer else "an unknown address", task)
        except asyncio.CancelledError:
            pass
        except Exception:  # one connection's trouble never takes the listener down
            log.exception("inbound connection failed")
        finally:
            self._open.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):  # gone already, or reset: closed either way
                await writer.wait_closed()  # at most SHUTDOWN_TIMEOUT_S: a stop leaves no socket behind

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, task: asyncio.Task[None]
    ) -> None:
        """Called once the handshake has verified the client's chain (a failed handshake never gets here)."""
        ssl_object = writer.get_extra_info("ssl_object")
        verdict = self._identities.of_der(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
        caller = verdict.uri
        if caller is None:
            log.warning("refused an inbound connection from %s: %s", peer, verdict.refusal or "no certificate")
            self._count(None, "denied")
            await self._refuse(reader, writer, task, RefusedConnection(None, peer, verdict.refusal))
            return
        if self._authorizer is not None:
            decision = self._authorizer.decide_now(caller, self._service, ANY_METHOD)
            if decision is None:
                decision = await self._authorizer.decide(caller, self._service, ANY_METHOD)
            if not decision.allowed:  # each call is answered, logged and counted by the refusal server
                self._count(caller, "denied")
                await self._refuse(reader, writer, task, RefusedConnection(caller, peer))
                return
        self._count(caller, "allowed")
        host, port = split_host_port(self.app_address)
        try:
            app_reader, app_writer = await asyncio.open_connection(host, port)
        except OSError as error:
            log.warning("the app at %s did not take a connection (%s): closing the caller's", self.app_address, error)
            return
        self.connections += 1
        try:
            await _first_done(
                self._pipe(reader, app_writer, task),
                self._pipe(app_reader, writer, task),
            )
        finally:
            app_writer.close()

    def _count(self, caller: str | None, outcome: str) -> None:
        if self._counted is not None:
            self._counted.labels(self._service, caller_label(service_of(caller)), outcome).inc()

    async def _refuse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[None],
        connection: RefusedConnection,
    ) -> None:
        """Splice a refused connection to the refusal server, which answers its calls; no app is involved."""
        refusals = await self._refusal_server()
        server_reader, server_writer = await asyncio.open_connection(LOOPBACK, refusals.port)
        local_port: int = server_writer.get_extra_info("sockname")[1]
        refusals.expect(local_port, connection)  # before the first byte: the server reads who it is on every call
        try:
            await _first_done(
                self._pipe(reader, server_writer, task, mute=connection.reauthorized),
                self._pipe(server_reader, writer, task),
                self._until_stale(connection, task),
            )
        finally:
            refusals.forget(local_port)
            server_writer.close()
        if connection.reauthorized.is_set():
            # Not close(): grpc clients do not answer TLS's close_notify, so the caller would keep sending on a
            # connection that hangs until ssl's shutdown timeout. A reset makes it dial again at once.
            writer.transport.abort()

    async def _until_stale(self, connection: RefusedConnection, task: asyncio.Task[None]) -> None:
        """Return (ending the connection) once a call got through the refusal stages and the answers have gone out
        (the caller's bytes are dropped from then on, so no new call keeps it open): the intentions now allow the
        caller, and its next connection is authorized afresh."""
        await connection.reauthorized.wait()
        while True:
            idle = time.monotonic() - self._open.get(task, 0.0)
            if idle >= STALE_QUIET_S:
                return
            await asyncio.sleep(STALE_QUIET_S - idle)

    async def _refusal_server(self) -> RefusalServer:
        """The refusal server, started by the first refused connection (most ports never need one)."""
        if self._refusals is None or _failed(self._refusals[1]):  # one that could not start is tried again
            server = RefusalServer(self._parts, self._clock)
            self._refusals = (server, asyncio.ensure_future(server.start()))
        server, started = self._refusals
        await asyncio.shield(started)
        return server

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        owner: asyncio.Task[None],
        mute: asyncio.Event | None = None,
    ) -> None:
        """Copy bytes one way until either side closes; once `mute` is set, read and drop them instead."""
        open_connections = self._open
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            while data := await reader.read(CHUNK_BYTES):
                if mute is not None and mute.is_set():
                    continue
                open_connections[owner] = time.monotonic()
                writer.write(data)
                await writer.drain()

    def _rotate(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        """During each handshake (OpenSSL calls it with or without SNI): switch to the current certificate."""
        current = self._tls_context()
        if current is not context:
            connection.context = current

    def _tls_context(self) -> ssl.SSLContext:
        """A server context for the current certificate, built once per rotation: ALPN h2 (gRPC clients insist),
        a client certificate required and verified against the trust bundle."""
        material = self._source.current()
        if self._context is not None and self._context[0] is material:
            return self._context[1]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=material.trust_bundle_pem.decode())
        context.set_alpn_protocols(["h2"])
        context.sni_callback = self._rotate
        with (
            in_memory_file("meshlet-l4-cert", material.cert_chain_pem) as cert,
            in_memory_file("meshlet-l4-key", material.private_key_pem) as key,
        ):
            context.load_cert_chain(cert, key)
        self._context = (material, context)
        return context

    def __repr__(self) -> str:
        return (
            f"<SpliceListener {self.address} (port {self.port}) L4 mTLS -> app {self.app_address}: "
            f"{len(self._open)} connections open, {self.connections} since start>"
        )


async def _first_done(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run the two directions; when one ends (a side closed), the connection is over: cancel the other."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def in_memory_file(name: str, data: bytes) -> Iterator[str]:
    """A path that reads `data` from memory only (Linux's ``memfd_create``), valid inside the block; nothing of
    it is ever on a disk, and it is gone once closed, or with the process, even one killed mid-load."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as out:
            out.write(data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
