"""Why a connection to an endpoint failed its TLS handshake, said in the mesh's words.

grpc reports every handshake failure as a bare UNAVAILABLE in its own words (measured, grpcio 1.85)::

    server's CA unknown to us   "...: Tls handshake failed (TSI_PROTOCOL_FAILURE): ... CERTIFICATE_VERIFY_FAILED:
                                 unable to get local issuer certificate: OK"
    server is another service   "...: Custom verification check failed with error: UNAUTHENTICATED: Hostname
                                 Verification Check failed."
    server does not speak TLS   "...: Tls handshake failed (TSI_PROTOCOL_FAILURE): ... WRONG_VERSION_NUMBER ..."
    server refused our cert,    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:...: Socket closed"
    or we are plaintext and it
    requires TLS

all of them prefixed "failed to connect to all addresses": the request never left, so re-sending it elsewhere is
safe, and the explained error keeps that code. `HandshakeFailures.explain` turns them into TLS_HANDSHAKE_FAILED
with the peer, the identity expected and the one presented, and the trust domains. grpc does not say what the
server presented, so on the first failure of an endpoint (then at most every PROBE_EVERY_S) it connects once
more with Python's ssl to read the server's certificate, and logs the explanation.

The server side learns nothing: grpcio closes a plaintext or uncertified connection inside its core (its log
says "Handshake failed ... WRONG_VERSION_NUMBER" at INFO verbosity) and never calls into Python, so a server
cannot count or log the callers its handshake refuses; the explanation lives on the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

import grpc
from cryptography import x509

from meshlet.endpoints import Endpoint
from meshlet.errors import ErrorReason, explained_failure

log = logging.getLogger("meshlet.tls")

PROBE_EVERY_S = 5.0  # per endpoint: a failing endpoint is probed (and the failure logged) at most this often
PROBE_TIMEOUT_S = 0.5
_CONNECT_FAILED = "failed to connect to all addresses"
_VERIFY_FAILED = re.compile(r"CERTIFICATE_VERIFY_FAILED: ([^:]+)")


class Handshake(Enum):
    """What went wrong, read from grpc's words; the value goes in the ErrorInfo's ``failure``."""

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


def classify(details: str, secure: bool) -> Handshake | None:
    """The handshake failure grpc's `details` describe, or None when they describe no handshake failure."""
    if _CONNECT_FAILED not in details:
        return None
    if not secure:
        return Handshake.PLAINTEXT_TO_TLS if details.endswith("Socket closed") else None
    if "Hostname Verification Check failed" in details:
        return Handshake.WRONG_SERVER
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return Handshake.SERVER_NOT_TRUSTED
    if "WRONG_VERSION_NUMBER" in details:
        return Handshake.SERVER_NOT_TLS
    if details.endswith("Socket closed"):
        return Handshake.CLIENT_REFUSED
    return None


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


async def probe_certificate(endpoint: Endpoint, timeout_s: float) -> Presented | None:
    """The certificate `endpoint` presents, read with a handshake of our own that verifies nothing and sends no
    certificate (TLS 1.3 ends the client's handshake before the server judges ours); None if it speaks no TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(endpoint.address, endpoint.port, ssl=context)
    except (OSError, ssl.SSLError, TimeoutError):
        return None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return Presented.from_der(der) if der else None
    except ValueError:
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                await writer.wait_closed()


class HandshakeFailures:
    """Explains an upstream's handshake failures; one per upstream, asked only when an attempt fails."""

    def __init__(
        self,
        expect: Callable[[], Expectation],
        *,
        probe: Callable[[Endpoint, float], Awaitable[Presented | None]] = probe_certificate,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._expect = expect
        self._probe = probe
        self._clock = clock
        self._probed: dict[Endpoint, tuple[float, Presented | None]] = {}

    async def explain(
        self, failed: grpc.aio.AioRpcError, endpoint: Endpoint, timeout_s: float = PROBE_TIMEOUT_S
    ) -> grpc.aio.AioRpcError | None:
        """`failed` as TLS_HANDSHAKE_FAILED with what to do, or None when it was no handshake failure."""
        details = failed.details() or ""
        if _CONNECT_FAILED not in details:  # most failures: answered by a server, or not a connection's
            return None
        expectation = self._expect()
        kind = classify(details, secure=expectation.identity is not None)
        if kind is None:
            return None
        presented, fresh = await self._presented(endpoint, min(timeout_s, PROBE_TIMEOUT_S))
        message = describe(kind, endpoint, expectation, presented, details)
        info = {"upstream": expectation.upstream, "peer": str(endpoint), "failure": kind.value}
        if expectation.identity is not None:
            info["expected_identity"] = expectation.identity
        if expectation.trust_domain is not None:
            info["expected_trust_domain"] = expectation.trust_domain
        if presented is not None and presented.identity is not None:
            info["presented_identity"] = presented.identity
            if presented.trust_domain is not None:
                info["presented_trust_domain"] = presented.trust_domain
        if fresh:
            log.warning("%s", message, extra={"reason": ErrorReason.TLS_HANDSHAKE_FAILED.value, **info})
        return explained_failure(failed, message, ErrorReason.TLS_HANDSHAKE_FAILED, info)

    async def _presented(self, endpoint: Endpoint, timeout_s: float) -> tuple[Presented | None, bool]:
        """What `endpoint` presented, probed at most every PROBE_EVERY_S; True when probed now."""
        now = self._clock()
        known = self._probed.get(endpoint)
        if known is not None and now - known[0] < PROBE_EVERY_S:
            return known[1], False
        if len(self._probed) > 256:  # endpoints come and go: forget old ones rather than grow
            self._probed.clear()
        presented = await self._probe(endpoint, timeout_s)
        self._probed[endpoint] = (now, presented)
        return presented, True


def describe(
    kind: Handshake, endpoint: Endpoint, expect: Expectation, presented: Presented | None, details: str
) -> str:
    """One line: what failed between whom, and what to do about it."""
    peer = f"{endpoint} ({expect.upstream})"
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
        found = _VERIFY_FAILED.search(details)
        why = found[1].strip() if found else "not verified"
        return (
            f"TLS handshake with {peer} failed: its certificate is not trusted here ({why}){shown}; this client "
            f"trusts the CAs of tls.ca ({domain}): issue both sides' certificates from one CA, or add the server's "
            "CA to tls.ca"
        )
    if kind is Handshake.SERVER_NOT_TLS:
        return (
            f"TLS handshake with {peer} failed: it does not speak TLS (a plaintext port, or tls.source off there); "
            f"turn mTLS on at {expect.upstream}, or use tls.source off here too for a local experiment"
        )
    if kind is Handshake.CLIENT_REFUSED:
        ours = expect.client_identity or "this client's certificate"
        return (
            f"TLS handshake with {peer} failed: it closed the connection mid-handshake, as a grpc server refuses a "
            f"client certificate, here {ours}{shown}: its tls.ca must hold the CA that issued ours ({domain}), and "
            "ours must not have expired"
        )
    if presented is not None:
        return (
            f"{peer} requires TLS{shown}, and this client is plaintext (tls.source off): set tls.source to consul "
            "or files"
        )
    return (
        f"{peer} closed the connection before HTTP/2 started: it most likely requires TLS (an mTLS port), and this "
        "client is plaintext (tls.source off): set tls.source to consul or files"
    )
