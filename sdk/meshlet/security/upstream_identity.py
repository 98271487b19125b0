"""Outbound, with URI-only leaves: an upstream's endpoint is used only once it has shown the upstream's SPIFFE ID in
its URI SAN.

grpcio's client matches a server only against DNS SANs, or the common name when there is none
(``grpc.ssl_target_name_override``; see certs.channel_options). Leaves that meshlet's CAs issue carry the identity
DNS SAN, which grpc matches on every connection (and handshake_failures explains). A real Consul's leaves carry only
the URI SAN, and its common names collide (``led-ger``, ``LEDGER`` and ``ledger`` share one), so grpcio alone would
accept another service's leaf. So there, before discovery hands an endpoint to the balancer, `VerifiedEndpoints`
opens one TLS connection to
it with Python's ssl (our certificate, our trust bundle), reads the leaf it presents and checks its one URI SAN names
the upstream's service, namespace, partition and trust domain (any datacenter: Consul fails over across them). An
endpoint that fails is left out and its reason is kept for the NO_HEALTHY_ENDPOINT message.

What it does not cover: grpc makes its own connections after the check; a process that later takes over a verified
endpoint's address and port is caught only by grpc's name check (above) until the endpoint leaves discovery and
comes back. Each endpoint costs one extra handshake, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from cryptography import x509

from meshlet.endpoints import Endpoint, EndpointSet
from meshlet.security.certs import CertificateSource, TlsMaterial
from meshlet.security.identity import SpiffeId
from meshlet.security.peers import RefusedPeer, one_spiffe_id

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 5.0
RECHECK_S = 1.0  # an endpoint that could not be reached is checked again this often while discovery lists it
_UNREACHABLE = "it could not be reached to check its identity"


def identity_mismatch(expected: SpiffeId, presented: SpiffeId) -> str | None:
    """Why `presented` is not the upstream `expected` names (its datacenter aside), or None when it is."""
    ours = (expected.trust_domain, expected.partition, expected.namespace, expected.service)
    theirs = (presented.trust_domain, presented.partition, presented.namespace, presented.service)
    if ours == theirs:
        return None
    return f"it presented {presented}, not the identity of {expected.service} ({expected})"


async def presented_identity(host: str, port: int, material: TlsMaterial, timeout_s: float) -> SpiffeId:
    """The SPIFFE ID in the leaf the server at `host`:`port` presents to a client holding `material`. Raises
    RefusedPeer (no single service URI SAN), ssl.SSLError (its chain is not trusted) or OSError."""
    context = _client_context(material)
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context, server_hostname=None), timeout_s
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        writer.transport.abort()  # no TLS close_notify exchange: grpc servers do not answer one
    if not der:
        raise RefusedPeer("it presented no certificate")
    return one_spiffe_id(x509.load_der_x509_certificate(der))


def _client_context(material: TlsMaterial) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # the identity is the URI SAN, checked by the caller; the chain is verified here
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=material.trust_bundle_pem.decode())
    context.set_alpn_protocols(["h2"])
    with _in_memory(material.cert_chain_pem) as cert, _in_memory(material.private_key_pem) as key:
        context.load_cert_chain(cert, key)
    return context


@contextlib.contextmanager
def _in_memory(data: bytes) -> Iterator[str]:
    """A path to `data` that never touches a disk (an anonymous memory file; ssl loads a chain only by path)."""
    fd = os.memfd_create("meshlet-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield str(Path("/proc/self/fd") / str(fd))
    finally:
        os.close(fd)


class VerifiedEndpoints:
    """Stands between discovery and one upstream: each endpoint in a new set is checked once (concurrently) and only
    those presenting `expected` reach `deliver`; `refused` holds why the others were left out."""

    def __init__(
        self,
        expected: Callable[[], SpiffeId],
        source: CertificateSource,
        deliver: Callable[[EndpointSet], None],
        *,
        timeout_s: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self._expected = expected
        self._source = source
        self._deliver = deliver
        self._timeout_s = timeout_s
        self._verdicts: dict[Endpoint, str | None] = {}  # endpoint -> why it is refused, None when verified
        self._latest = EndpointSet()
        self._checking: set[asyncio.Task[None]] = set()

    @property
    def refused(self) -> Mapping[Endpoint, str]:
        return {endpoint: why for endpoint, why in self._verdicts.items() if why is not None}

    def update(self, endpoints: EndpointSet) -> None:
        """Discovery's new set: deliver it now if every endpoint was checked before, else once the new ones are."""
        self._latest = endpoints
        for gone in [endpoint for endpoint in self._verdicts if endpoint not in endpoints]:
            del self._verdicts[gone]  # one that comes back is checked again
        unknown = [endpoint for endpoint in endpoints if endpoint not in self._verdicts]
        if not unknown:
            self._pass_on()
            return
        task = asyncio.get_running_loop().create_task(self._check(unknown))
        self._checking.add(task)
        task.add_done_callback(self._checking.discard)

    async def _check(self, endpoints: list[Endpoint]) -> None:
        while endpoints:
            verdicts = await asyncio.gather(*(self._verdict(endpoint) for endpoint in endpoints))
            for endpoint, verdict in zip(endpoints, verdicts, strict=True):
                if endpoint in self._latest:
                    self._verdicts[endpoint] = verdict
            self._pass_on()
            endpoints = [e for e in endpoints if e in self._latest and self._verdicts.get(e) == _UNREACHABLE]
            if endpoints:
                await asyncio.sleep(RECHECK_S)

    async def _verdict(self, endpoint: Endpoint) -> str | None:
        expected = self._expected()
        try:
            presented = await presented_identity(
                endpoint.address, endpoint.port, self._source.current(), self._timeout_s
            )
        except RefusedPeer as refused:
            why: str | None = str(refused)
        except ssl.SSLCertVerificationError as error:
            why = f"its certificate is not trusted ({error.verify_message})"
        except ssl.SSLError as error:
            why = f"the TLS handshake with it failed ({error.reason or error})"
        except (OSError, TimeoutError) as error:  # not up yet, or gone: held back and checked again
            log.debug("could not check the identity of %s at %s: %s", expected.service, endpoint, error)
            return _UNREACHABLE
        else:
            why = identity_mismatch(expected, presented)
        if why is not None:
            log.warning(
                "refusing %s as an instance of %s: %s", endpoint, expected.service, why, extra={"event": "impostor"}
            )
        return why

    def _pass_on(self) -> None:
        verified = EndpointSet(e for e in self._latest if e in self._verdicts and self._verdicts[e] is None)
        self._deliver(verified)

    async def close(self) -> None:
        for task in list(self._checking):
            task.cancel()
        await asyncio.gather(*self._checking, return_exceptions=True)
