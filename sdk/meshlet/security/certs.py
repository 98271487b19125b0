"""TLS material for mTLS and the gRPC credentials built from it: the transport's side of
``tls.source``. Sources (``sources.py``) load and rotate a :class:`TlsMaterial`; this module checks one
(chain, key and trust bundle agree, the leaf names a service) and turns it into grpc credentials.

Rotation without restarts: :func:`server_credentials` hands grpc a fetcher that it calls before every new
handshake, so new connections use the latest certificate and trust bundle while established ones keep
theirs. Outbound, a rotation builds new channels from :func:`channel_credentials` (grpc channel
credentials are fixed for a channel's life).

What a mutual-TLS peer looks like to a grpc.aio servicer (measured, grpcio 1.85, BoringSSL)::

    context.auth_context() == {
        "transport_security_type": [b"ssl"],
        "x509_subject_alternative_name": [b"spiffe://td/ns/default/dc/dc1/svc/orders",
                                          b"orders.svc.default.ns.dc1.dc.td"],   # every SAN
        "peer_uri": [b"spiffe://td/ns/default/dc/dc1/svc/orders"],             # URI SANs only
        "peer_dns": [b"orders.svc.default.ns.dc1.dc.td"],                     # DNS SANs only
        "peer_spiffe_id": [b"spiffe://td/ns/default/dc/dc1/svc/orders"],       # absent unless one URI SAN
        "x509_subject": [...], "x509_common_name": [...], "x509_pem_cert": [...],
        "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"], "ssl_tls_version": [...], ...
    }
    context.peer_identity_key() == "x509_subject_alternative_name"

A plaintext peer's is ``{"transport_security_type": [b"insecure"], "security_level": [b"TSI_SECURITY_NONE"]}``
and its ``peer_identity_key()`` is None. grpc calls the server's certificate fetcher on
one of its own threads, not the event loop's (measured), hence the immutable snapshot it reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from meshlet.security.identity import InvalidSpiffeId, SpiffeId, identity_dns_name

MAX_CHAIN_DEPTH = 8  # leaf, intermediates, root: far more than any real mesh CA uses
_NOT_DNS = re.compile(r"[^a-z0-9]")


class TlsConfigError(ValueError):
    """TLS material that cannot be used; the message names the file or source and what to do."""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Our certificate chain (leaf first), its private key and the CAs we trust in peers.

    `trust_bundle_pem` holds one or more CA certificates: during a root rotation both the old and the new
    root, so peers on either side of the rotation are accepted. `serial` is the leaf's serial number in
    Consul's spelling (colon-separated lower-case hex), so it equals the Connect CA's ``SerialNumber``.
    Build one with :meth:`from_pem`, which checks that the parts agree.
    """

    cert_chain_pem: bytes
    private_key_pem: bytes = field(repr=False)
    trust_bundle_pem: bytes
    spiffe_id: str
    not_after: float  # epoch seconds
    serial: str
    dns_names: tuple[str, ...] = ()

    @classmethod
    def from_pem(
        cls,
        cert_chain_pem: bytes,
        private_key_pem: bytes,
        trust_bundle_pem: bytes,
        *,
        cert_origin: str = "the certificate",
        key_origin: str = "the private key",
        ca_origin: str = "the trust bundle",
    ) -> TlsMaterial:
        """Check and read material. The origins name where each part came from (a file path, a Consul
        endpoint) so that a :class:`TlsConfigError` tells the operator which one to fix."""
        chain = _certificates(cert_chain_pem, cert_origin, "the service's certificate chain, leaf first")
        bundle = _certificates(trust_bundle_pem, ca_origin, "the CA certificates that sign peers' certificates")
        leaf = chain[0]
        _check_key(private_key_pem, leaf, key_origin, cert_origin)
        spiffe_id = _spiffe_id(leaf, cert_origin)
        _check_issued(chain, bundle, cert_origin, ca_origin)
        return cls(
            cert_chain_pem=cert_chain_pem,
            private_key_pem=private_key_pem,
            trust_bundle_pem=trust_bundle_pem,
            spiffe_id=spiffe_id,
            not_after=leaf.not_valid_after_utc.timestamp(),
            serial=colon_hex(leaf.serial_number),
            dns_names=tuple(_sans(leaf, x509.DNSName)),
        )

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId.parse(self.spiffe_id)

    @property
    def identity_dns_name(self) -> str | None:
        """The DNS SAN that carries our identity, or None when the CA added none (a real Consul's Connect CA
        issues URI-only leaves): then peers cannot verify by name that we are who the URI says."""
        name = self.identity.dns_name
        return name if name in self.dns_names else None

    def __repr__(self) -> str:
        expires = datetime.fromtimestamp(self.not_after, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        roots = self.trust_bundle_pem.count(b"-----BEGIN CERTIFICATE-----")
        return f"<TlsMaterial {self.spiffe_id} serial {self.serial}, expires {expires}, trusts {roots} CA(s)>"


class CertificateSource(Protocol):
    """Where TLS material comes from (``tls.source``): files on disk or the Consul Connect CA.

    `start` loads the first material or raises :class:`TlsConfigError`; from then on `current` never
    blocks and never fails. `subscribe` callbacks run on the event loop after each rotation, with the new
    material; the returned callable unsubscribes.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def current(self) -> TlsMaterial: ...

    def subscribe(self, callback: Callable[[TlsMaterial], None]) -> Callable[[], None]: ...


def server_credentials(source: CertificateSource) -> grpc.ServerCredentials:
    """Dynamic mTLS credentials for ``server.add_secure_port``: client certificates are required and must
    chain to the current trust bundle; after a rotation, the next handshake uses the new certificate and
    bundle without a restart. Works with ``grpc.aio.server()`` (tested). Call after ``source.start()``."""
    certificates = _ServerCertificates(source.current())
    source.subscribe(certificates.update)
    return grpc.dynamic_ssl_server_credentials(
        certificates.initial, certificates.fetch, require_client_authentication=True
    )


def channel_credentials(material: TlsMaterial) -> grpc.ChannelCredentials:
    """Client mTLS credentials: present our chain, verify the server against our trust bundle. Pair them
    with :func:`channel_options` so that the server's identity is verified too, not only its CA."""
    return grpc.ssl_channel_credentials(
        root_certificates=material.trust_bundle_pem,
        private_key=material.private_key_pem,
        certificate_chain=material.cert_chain_pem,
    )


def channel_options(
    upstream_service: str, namespace: str, datacenter: str, trust_domain: str, *, by_common_name: bool = False
) -> tuple[tuple[str, str], ...]:
    """Channel options that make the client accept only the upstream it meant: grpcio matches the
    server's DNS SANs against ``grpc.ssl_target_name_override`` (it cannot match a URI SAN; measured), so
    this names the identity DNS SAN that meshlet's CAs add beside the SPIFFE URI.

    A real Consul's Connect CA issues URI-only leaves; for those grpcio falls back to the certificate's
    common name (it does when a certificate has no DNS or IP SAN; measured), so `by_common_name` names
    Consul's ``ServiceCN`` instead, which encodes the service and namespace but not the datacenter, and
    only 8 characters of the trust domain. Pass ``by_common_name=material.identity_dns_name is None``.
    Trap: the DNS form against a URI-only server, or the reverse, fails every handshake.
    """
    if by_common_name:
        name = consul_service_cn(upstream_service, namespace, trust_domain)
    else:
        name = identity_dns_name(upstream_service, namespace, datacenter, trust_domain)
    return (("grpc.ssl_target_name_override", name),)


def consul_service_cn(service: str, namespace: str, trust_domain: str) -> str:
    """Consul's ``ServiceCN``, the common name of its leaves: ``<service>.svc.<namespace>.<td[:8]>.consul``,
    the service lower-cased and stripped to ``[a-z0-9]`` and cut so the name fits X.509's 64 characters.
    The dev agent (an island this module may not import) writes the same; change both or neither."""
    suffix = f".svc.{namespace}.{trust_domain[:8]}.consul"
    return _NOT_DNS.sub("", service.lower())[: max(0, 64 - len(suffix))] + suffix


def peer_spiffe_id(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The caller's ``spiffe://`` URI from ``ServicerContext.auth_context()``, or None for a plaintext or
    identity-less peer. grpc's own ``peer_spiffe_id`` is used when present (it is set only for exactly one
    URI SAN); otherwise the single spiffe URI among ``peer_uri``. A certificate with several spiffe URIs
    names no single identity (the SPIFFE spec allows one) and yields None. meshlet's own servers read callers
    with `meshlet.security.peers.CallerIdentities`, which also checks the trust domain and the chain's shape."""
    for value in auth_context.get("peer_spiffe_id", ()):
        return value.decode("utf-8", "replace")
    found = [uri for uri in auth_context.get("peer_uri", ()) if uri.startswith(b"spiffe://")]
    return found[0].decode("utf-8", "replace") if len(found) == 1 else None


def colon_hex(serial: int) -> str:
    """A serial number as Consul writes it: ``3a:0f:..``."""
    return ":".join(f"{byte:02x}" for byte in serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"))


class _ServerCertificates:
    """The configuration grpc's fetcher hands out. The fetcher runs on grpc's threads, so it only compares
    and swaps whole, immutable configurations; `update` replaces the latest one from the event loop."""

    def __init__(self, material: TlsMaterial) -> None:
        self.initial = self._latest = self._served = _server_configuration(material)

    def update(self, material: TlsMaterial) -> None:
        self._latest = _server_configuration(material)

    def fetch(self) -> Any:
        """None means "keep the current one" (grpc's contract); called before every new handshake."""
        latest = self._latest
        if latest is self._served:
            return None
        self._served = latest
        return latest


def _server_configuration(material: TlsMaterial) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key_pem, material.cert_chain_pem)], root_certificates=material.trust_bundle_pem
    )


def _certificates(pem: bytes, origin: str, what: str) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError:
        found = []
    if not found:
        raise TlsConfigError(
            f"{origin} holds no readable PEM certificate (expected -----BEGIN CERTIFICATE-----): it must be {what}"
        )
    return found


def _check_key(key_pem: bytes, leaf: x509.Certificate, key_origin: str, cert_origin: str) -> None:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise TlsConfigError(
            f"{key_origin} is not an unencrypted PEM private key ({exc}); write the key issued with {cert_origin}, "
            "in PKCS#8, PKCS#1 or SEC1 PEM without a passphrase"
        ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise TlsConfigError(
            f"the private key in {key_origin} does not match the certificate in {cert_origin} (serial "
            f"{colon_hex(leaf.serial_number)}): write the key issued with that certificate, and the leaf first "
            "in the chain"
        )


def _spiffe_id(leaf: x509.Certificate, cert_origin: str) -> str:
    uris = [uri for uri in _sans(leaf, x509.UniformResourceIdentifier) if uri.startswith("spiffe:")]
    if len(uris) != 1:
        problem = "has no spiffe:// URI SAN" if not uris else f"has {len(uris)} spiffe:// URI SANs, not one"
        raise TlsConfigError(
            f"the certificate in {cert_origin} {problem}, so it names no service identity: issue it with "
            "'meshlet certs issue' or the Consul Connect CA, with one URI SAN "
            "spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>"
        )
    try:
        SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise TlsConfigError(f"the certificate in {cert_origin} names no service: {exc}") from None
    return uris[0]


def _check_issued(
    chain: list[x509.Certificate], bundle: list[x509.Certificate], cert_origin: str, ca_origin: str
) -> None:
    """The leaf must chain, through the intermediates we present, to a CA we trust: peers share our trust
    bundle, so a leaf from another CA would fail every handshake later, with a vaguer message."""
    candidates = chain[1:] + bundle
    current = chain[0]
    for _ in range(MAX_CHAIN_DEPTH):
        if current in bundle:
            return
        issuer = next((ca for ca in candidates if ca != current and _issued_by(current, ca)), None)
        if issuer is None:
            break
        current = issuer
    raise TlsConfigError(
        f"the certificate in {cert_origin} (issuer {chain[0].issuer.rfc4514_string()!r}) does not chain to any CA "
        f"in {ca_origin}: use the CA that signed it, or during a root rotation both the old and the new root"
    )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _sans(cert: x509.Certificate, kind: type[x509.DNSName] | type[x509.UniformResourceIdentifier]) -> list[str]:
    """The certificate's SANs of one kind; none without a SAN extension (cryptography cannot make an empty one)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(names.get_values_for_type(kind))
