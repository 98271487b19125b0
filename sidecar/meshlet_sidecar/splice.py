"""The L4 inbound hop (``sidecar.inbound_mode: l4``): terminate mTLS, authorize the caller's service identity
once per connection, then splice the bytes to the app without parsing gRPC, as Consul's L4 intentions do.

Only for a port whose authorization is by identity alone: no per-method intention and no rate limit (the config
refuses l4 otherwise), since neither can be decided without reading the calls. What it gives up against the L7
listener: a denied caller's connection is closed (it sees UNAVAILABLE, not PERMISSION_DENIED with ErrorInfo);
there is no per-call tracing, metrics or access log on this hop; a drain cannot send GOAWAY, so on stop the
listener waits for its connections to go quiet (no byte for `QUIET_S`), up to the grace period, then closes them.
What it wins: the per-call cost of grpc's server and client machinery on this hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from meshlet.config import split_host_port
from meshlet.security.certs import CertificateSource, TlsMaterial
from meshlet.security.identity import InvalidSpiffeId, SpiffeId
from meshlet.security.intentions import Authorizer, service_of

log = logging.getLogger("meshlet.sidecar")

CHUNK_BYTES = 256 * 1024
HANDSHAKE_TIMEOUT_S = 10.0
QUIET_S = 1.0  # on stop, a connection with no byte for this long has nothing in flight worth waiting for
ANY_METHOD = "*"  # l4 ports have no per-method intention, so one decision covers every method


class SpliceListener:
    """One TCP server on `address`: mTLS with `source`'s current certificate (new connections pick up a rotation),
    an identity check and one authorization per connection, then bytes both ways to the app at `app_address`."""

    def __init__(
        self,
        address: str,
        *,
        source: CertificateSource,
        authorizer: Authorizer | None,
        service: str,
        app_address: str,
    ) -> None:
        self.address = address
        self.port = 0
        self.app_address = app_address
        self.unary_calls = 0  # calls are not seen at L4: the per-handler counters stay at zero
        self.generic_calls = 0
        self.connections = 0  # accepted and spliced since start
        self._source = source
        self._authorizer = authorizer
        self._service = service
        self._server: asyncio.Server | None = None
        self._open: dict[asyncio.Task[None], float] = {}  # connection -> when it last moved a byte
        self._context: tuple[TlsMaterial, ssl.SSLContext] | None = None
        self._files = Path(tempfile.mkdtemp(prefix="meshlet-l4-"))

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
                host or None,
                port,
                ssl=context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
                reuse_address=True,
            )
        except OSError as error:
            raise OSError(
                f"cannot listen for inbound calls on {self.address} ({error.strerror or error}): another process "
                "holds the port or the address is not one of this host's; set sidecar.inbound to a free local address"
            ) from None
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self, grace_s: float | None) -> None:
        """Refuse new connections at once; wait (up to `grace_s`) until the open ones have gone quiet, then close
        them."""
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
        for path in self._files.glob("*"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._files.rmdir()

    # ------------------------------------------------------------------ one connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, task: asyncio.Task[None]
    ) -> None:
        """Called once the handshake has verified the client's chain (a failed handshake never gets here)."""
        caller = caller_identity(writer.get_extra_info("peercert"))
        if caller is None:
            log.warning("refused an inbound connection from %s: its certificate names no service", peer)
            return
        if self._authorizer is not None:
            decision = self._authorizer.decide_now(caller, self._service, ANY_METHOD)
            if decision is None:
                decision = await self._authorizer.decide(caller, self._service, ANY_METHOD)
            if not decision.allowed:
                log.warning(
                    "denied %s -> %s (L4, connection closed): %s",
                    service_of(caller),
                    self._service,
                    decision.reason,
                    extra={"event": "authz_denied", "caller": caller, "target": self._service},
                )
                return
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

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, owner: asyncio.Task[None]
    ) -> None:
        open_connections = self._open
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            while data := await reader.read(CHUNK_BYTES):
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
        cert, key = self._files / "cert.pem", self._files / "key.pem"  # ssl loads a chain only from files
        cert.write_bytes(material.cert_chain_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(material.private_key_pem)
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


def caller_identity(certificate: object) -> str | None:
    """The verified client certificate's one ``spiffe://`` URI SAN naming a service, else None."""
    if not isinstance(certificate, dict):
        return None
    uris = [value for kind, value in certificate.get("subjectAltName", ()) if kind == "URI"]
    found = [uri for uri in uris if isinstance(uri, str) and uri.startswith("spiffe://")]
    if len(found) != 1:
        return None
    try:
        SpiffeId.parse(found[0])
    except InvalidSpiffeId:
        return None
    return found[0]
