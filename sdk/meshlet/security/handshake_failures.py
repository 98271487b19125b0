"""Why a connection to an endpoint failed its TLS handshake, said in the mesh's words, from facts meshlet gathers.

The send stage starts a call only on a connected channel, so a failed handshake reaches it as NotConnected
("could not connect"): never sent, by construction, and retried as such. `HandshakeFailures.explain` turns that
into TLS_HANDSHAKE_FAILED (the same code) with the peer, the identity expected and the one presented, and the
trust domains. grpc's own words are never read: meshlet connects to the endpoint itself, with Python's ssl, and
judges from what it finds (`judge`)::

    no TCP connection (refused, timed out)          not a TLS failure: NotConnected is left as it is
    TCP, and what comes back is no TLS               server_not_tls (for a plaintext client: no TLS failure)
    a certificate our trust bundle does not verify   server_certificate_not_trusted
    a verified certificate of another identity       wrong_server_identity
    the verified certificate we expect               client_certificate_refused: a grpc server refuses a client
                                                     certificate by closing the connection mid-handshake
    any certificate, and this client is plaintext    plaintext_client

A probe reads the certificate without sending one of ours (TLS 1.3 ends the client's handshake before the server
judges the client's), and verifies it with our trust bundle in a second handshake only when the first shows a
certificate. It runs only on a failed connection, at most every PROBE_EVERY_S per endpoint (concurrent failures
share one), and logs the explanation when it does. Nothing here decides whether a request may be re-sent.

The server side learns nothing: grpcio closes a plaintext or uncertified connection inside its core (its log
says "Handshake failed ... WRONG_VERSION_NUMBER" at INFO verbosity) and never calls into Python, so a server
cannot count or log the callers its handshake refuses; the explanation lives on the client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

import grpc
from cryptography import x509

from meshlet.endpoints import Endpoint
from meshlet.errors import ErrorReason, explained_failure

log = logging.getLogger("meshlet.tls")

PROBE_EVERY_S = 5.0  # per endpoint: a failing endpoint is probed (and the failure logged) at most this often
PROBE_TIMEOUT_S = 0.5
# What OpenSSL says when the bytes a server sends back to a ClientHello are no TLS record (a plaintext gRPC server
# answers with an HTTP/2 frame, an HTTP/1 server with a status line: both WRONG_VERSION_NUMBER, measured).
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL"})


class Handshake(Enum):
    """What went wrong; the value goes in the ErrorInfo's ``failure``."""

    SERVER_NOT_TRUSTED = "server_certificate_not_trusted"
    WRONG_SERVER = "wrong_server_identity"
    SERVER_NOT_TLS = "server_not_tls"
    CLIENT_REFUSED = "client_certificate_refused"
    PLAINTEXT_TO_TLS = "plaintext_client"


@dataclass(frozen=True, slots=True)
class Expectation:
    """What this client expects of an upstream's servers, read when a failure is explained (after rotations)."""

    upstream: str
    identity: str | None = None  # the SPIFFE ID the server must present; None: this client is plaintext
    trust_domain: str | None = None
    client_identity: str | None = None
    trust_bundle_pem: bytes | None = field(default=None, repr=False)  # the CAs this client verifies servers with


@dataclass(frozen=True, slots=True)
class Presented:
    """What a server presented when probed: its SPIFFE ID (or subject) and the CA that issued it."""

    identity: str | None
    issuer: str

    @classmethod
    def from_der(cls, der: bytes) -> Presented:
        certificate = x509.load_der_x509_certificate(der)
        try:
            sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = [
                uri for uri in sans.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith("spiffe:")
            ]
        except x509.ExtensionNotFound:
            uris = []
        identity = uris[0] if len(uris) == 1 else certificate.subject.rfc4514_string() or None
        return cls(identity, certificate.issuer.rfc4514_string())

    @property
    def trust_domain(self) -> str | None:
        if self.identity is None or not self.identity.startswith("spiffe://"):
            return None
        return self.identity.removeprefix("spiffe://").partition("/")[0]


@dataclass(frozen=True, slots=True)
class Probed:
    """What an endpoint did when meshlet connected to it itself.

    `speaks_tls` False: it took the connection and answered a TLS ClientHello with something else. With TLS,
    `presented` is its certificate (None if unreadable) and `untrusted` why our bundle does not verify it (None:
    verified, or not checked because this client has no bundle)."""

    speaks_tls: bool
    presented: Presented | None = None
    untrusted: str | None = None


async def probe(endpoint: Endpoint, trust_bundle_pem: bytes | None, timeout_s: float) -> Probed | None:
    """Connect to `endpoint` as a TLS client that sends no certificate, and verify what it presents with
    `trust_bundle_pem` if given; None when that says nothing (no TCP connection, a timeout, a connection closed
    mid-handshake, a second answer unlike the first)."""
    try:
        async with asyncio.timeout(timeout_s):
            read = await _handshake(endpoint, _reading_context())
            if read is None or read.presented is None or trust_bundle_pem is None:
                return read
            verified = await _handshake(endpoint, _verifying_context(trust_bundle_pem))
    except TimeoutError:
        return None
    if verified is None or not verified.speaks_tls:
        return None
    return Probed(speaks_tls=True, presented=read.presented, untrusted=verified.untrusted)


async def _handshake(endpoint: Endpoint, context: ssl.SSLContext) -> Probed | None:
    """One TLS handshake with `endpoint`, as `context` sees it."""
    try:
        _reader, writer = await asyncio.open_connection(endpoint.address, endpoint.port)
    except OSError:
        return None
    try:
        await writer.start_tls(context)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return Probed(speaks_tls=True, presented=_presented(der) if der else None)
    except ssl.SSLCertVerificationError as refused:
        return Probed(speaks_tls=True, untrusted=refused.verify_message or "not verified")
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return None  # closed mid-handshake: a server that refuses TLS callers, or one going away
    except ssl.SSLError as failed:
        if failed.reason in _NOT_TLS:  # our own TLS stack's verdict on the bytes that came back
            return Probed(speaks_tls=False)
        return None  # a TLS alert, say: a TLS 1.2 server refusing a client without a certificate
    except OSError:
        return None
    finally:
        writer.close()


def _reading_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context


def _verifying_context(trust_bundle_pem: bytes) -> ssl.SSLContext:
    """Verifies the chain as grpc does (names are compared by `judge`, SPIFFE IDs rather than host names)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=trust_bundle_pem.decode("ascii"))
    context.set_alpn_protocols(["h2"])
    return context


def _presented(der: bytes) -> Presented | None:
    try:
        return Presented.from_der(der)
    except ValueError:
        return None


def judge(expect: Expectation, probed: Probed | None) -> Handshake | None:
    """The handshake failure `probed` proves, or None when it proves none (the failure was not TLS's, or the
    endpoint said nothing)."""
    if probed is None:
        return None
    if expect.identity is None:  # a plaintext client: only a TLS server makes its failure a TLS one
        return Handshake.PLAINTEXT_TO_TLS if probed.speaks_tls else None
    if not probed.speaks_tls:
        return Handshake.SERVER_NOT_TLS
    if probed.presented is None:
        return None
    if probed.untrusted is not None:
        return Handshake.SERVER_NOT_TRUSTED
    if probed.presented.identity != expect.identity:
        return Handshake.WRONG_SERVER
    return Handshake.CLIENT_REFUSED


Probe = Callable[[Endpoint, bytes | None, float], Awaitable[Probed | None]]


@dataclass(frozen=True, slots=True)
class Explanation:
    """What the status, the span and the log say of an endpoint's failed handshakes."""

    message: str
    info: dict[str, str]


class HandshakeFailures:
    """Explains an upstream's failed connections; one per upstream, asked only when an attempt could not connect."""

    def __init__(
        self, expect: Callable[[], Expectation], *, probe: Probe = probe, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._expect = expect
        self._probe = probe
        self._clock = clock
        self._explaining: dict[Endpoint, tuple[float, asyncio.Task[Explanation | None]]] = {}

    async def explain(
        self, failed: grpc.aio.AioRpcError, endpoint: Endpoint, timeout_s: float = PROBE_TIMEOUT_S
    ) -> grpc.aio.AioRpcError | None:
        """`failed` (an attempt that could not connect to `endpoint`: never sent) as TLS_HANDSHAKE_FAILED with the
        same code and what to do, or None when the endpoint shows no handshake failure. Waits at most
        `timeout_s` (the call's time left) for the probe."""
        if failed.code() is not grpc.StatusCode.UNAVAILABLE:
            return None  # the deadline passed while connecting: no time left to find out why
        try:
            async with asyncio.timeout(min(timeout_s, 2 * PROBE_TIMEOUT_S)):
                found = await asyncio.shield(self._explanation_of(endpoint))
        except TimeoutError:
            return None
        if found is None:
            return None
        return explained_failure(failed, found.message, ErrorReason.TLS_HANDSHAKE_FAILED, found.info)

    def _explanation_of(self, endpoint: Endpoint) -> asyncio.Task[Explanation | None]:
        """The explanation of `endpoint`'s failures: probed at most every PROBE_EVERY_S, shared meanwhile."""
        now = self._clock()
        known = self._explaining.get(endpoint)
        if known is not None and now - known[0] < PROBE_EVERY_S:
            return known[1]
        if len(self._explaining) > 256:  # endpoints come and go: forget old ones rather than grow
            self._explaining = {key: value for key, value in self._explaining.items() if not value[1].done()}
        task = asyncio.get_running_loop().create_task(self._explain(endpoint, self._expect()))
        self._explaining[endpoint] = (now, task)
        return task

    async def _explain(self, endpoint: Endpoint, expectation: Expectation) -> Explanation | None:
        """Probe `endpoint`, judge, and log the explanation once (whoever waits for it, or none)."""
        try:
            probed = await self._probe(endpoint, expectation.trust_bundle_pem, PROBE_TIMEOUT_S)
        except Exception:  # an explanation must never fail a call: it is left unexplained
            log.debug("probing %s failed", endpoint, exc_info=True)
            return None
        kind = judge(expectation, probed)
        if kind is None or probed is None:
            return None
        found = Explanation(describe(kind, endpoint, expectation, probed), facts(kind, endpoint, expectation, probed))
        log.warning("%s", found.message, extra={"reason": ErrorReason.TLS_HANDSHAKE_FAILED.value, **found.info})
        return found


def facts(kind: Handshake, endpoint: Endpoint, expect: Expectation, probed: Probed) -> dict[str, str]:
    """The ErrorInfo's metadata: who, what was expected and what was presented."""
    info = {"upstream": expect.upstream, "peer": str(endpoint), "failure": kind.value}
    if expect.identity is not None:
        info["expected_identity"] = expect.identity
    if expect.trust_domain is not None:
        info["expected_trust_domain"] = expect.trust_domain
    presented = probed.presented
    if presented is not None and presented.identity is not None:
        info["presented_identity"] = presented.identity
        if presented.trust_domain is not None:
            info["presented_trust_domain"] = presented.trust_domain
    return info


def describe(kind: Handshake, endpoint: Endpoint, expect: Expectation, probed: Probed) -> str:
    """One line: what failed between whom, and what to do about it."""
    peer = f"{endpoint} ({expect.upstream})"
    presented = probed.presented
    shown = f" (it presented {presented.identity}, issued by {presented.issuer!r})" if presented else ""
    domain = f"trust domain {expect.trust_domain}" if expect.trust_domain else "this client's trust bundle"
    if kind is Handshake.WRONG_SERVER:
        got = presented.identity if presented is not None else "another identity"
        return (
            f"TLS handshake with {peer} failed: it presented {got}, not {expect.identity}: the address Consul lists "
            f"for {expect.upstream} serves another service (a stale registration, or a server started with another "
            "service's certificate); deregister it or give that server its own certificate"
        )
    if kind is Handshake.SERVER_NOT_TRUSTED:
        return (
            f"TLS handshake with {peer} failed: its certificate is not trusted here ({probed.untrusted}){shown}; "
            f"this client trusts the CAs of tls.ca ({domain}): issue both sides' certificates from one CA, or add "
            "the server's CA to tls.ca"
        )
    if kind is Handshake.SERVER_NOT_TLS:
        return (
            f"TLS handshake with {peer} failed: it does not speak TLS (a plaintext port, or tls.source off there); "
            f"turn mTLS on at {expect.upstream}, or use tls.source off here too for a local experiment"
        )
    if kind is Handshake.CLIENT_REFUSED:
        ours = expect.client_identity or "this client's certificate"
        return (
            f"TLS handshake with {peer} failed: it is the server expected{shown} and this client trusts it, so it "
            f"refused ours, {ours} (a grpc server refuses a client certificate by closing the connection "
            f"mid-handshake): its tls.ca must hold the CA that issued ours ({domain}), and ours must not have expired"
        )
    return (
        f"{peer} requires TLS{shown}, and this client is plaintext (tls.source off): set tls.source to consul or files"
    )
