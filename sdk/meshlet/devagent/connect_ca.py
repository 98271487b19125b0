"""The Connect CA: an EC P-256 root created on first start (kept across restarts with ``--data-dir``) and
SPIFFE leaf certificates signed by it, cached per service and reissued before they expire, as Consul's
built-in CA and agent leaf cache do. ``api/connect.py`` serves them; this module reads no clock (``now``
is injected) and does no I/O.

A leaf names its service twice: in the SPIFFE URI SAN, which Consul and Envoy check, and in a DNS SAN
(:func:`identity_dns_name`), because a grpcio client can only verify a peer by DNS name
(``grpc.ssl_target_name_override``).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlet.devagent.raft import RaftIndex

ROOT_NAME = "Consul CA Primary Cert"
ROOT_TTL_S = 87600 * 3600.0  # Consul's default RootCertTTL, ten years
CLOCK_DRIFT_S = 60.0  # Consul signs "valid from one minute ago" to absorb clock drift
NAMESPACE = "default"
_NOT_DNS = re.compile(r"[^a-z0-9]")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # a DNS label (RFC 1123)


def identity_dns_name(service: str, namespace: str, datacenter: str, trust_domain: str) -> str:
    """The DNS SAN of a leaf: ``<service>.svc.<namespace>.ns.<dc>.dc.<trust-domain>``, lower case.

    It carries the same identity as the SPIFFE URI so that TLS stacks that only match DNS names (grpcio's
    ``ssl_target_name_override``) can verify a peer, e.g. ``orders.svc.default.ns.dc1.dc.<uuid>.consul``.
    The SDK relies on this exact format; change it in both places or not at all.
    """
    return f"{service}.svc.{namespace}.ns.{datacenter}.dc.{trust_domain}".lower()


def valid_service_name(name: str) -> bool:
    """A name a leaf may be issued for: a DNS label, as Consul wants service names to be (it warns about others).
    Never ``*`` or a dotted name, which would put a wildcard or another name's suffix in the leaf's DNS SAN."""
    return _SERVICE_NAME.fullmatch(name) is not None


def spiffe_service_uri(trust_domain: str, datacenter: str, service: str, namespace: str = NAMESPACE) -> str:
    """Consul's service identity: ``spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>``."""
    return f"spiffe://{trust_domain}/ns/{namespace}/dc/{datacenter}/svc/{quote(service, safe='')}"


def service_cn(service: str, namespace: str, trust_domain: str) -> str:
    """Consul's ``ServiceCN``: the sanitised service name, cut so the CN fits X.509's 64 characters."""
    suffix = f".svc.{namespace}.{trust_domain[:8]}.consul"
    return _NOT_DNS.sub("", service.lower())[: max(0, 64 - len(suffix))] + suffix


class NotConnectIdentity(ValueError):
    """Not a SPIFFE ID Consul issues (authorize: ``ClientCertURI not a valid Connect identifier``)."""


class NotServiceIdentity(NotConnectIdentity):
    """A Connect identity, but of an agent, a server, a gateway or the CA itself, not of a service."""


@dataclass(frozen=True)
class ServiceIdentity:
    """The parts of a service's SPIFFE ID; `partition` is empty unless the ID names one."""

    trust_domain: str
    partition: str
    namespace: str
    datacenter: str
    service: str


_SERVICE_PATH = re.compile(r"^(?:/ap/([^/]+))?/ns/([^/]+)/dc/([^/]+)/svc/([^/]+)$")
_OTHER_PATHS = (
    re.compile(r"^(?:/ap/([^/]+))?/agent/client/dc/([^/]+)/id/([^/]+)$"),
    re.compile(r"^/agent/server/dc/([^/]+)$"),
    re.compile(r"^(?:/ap/([^/]+))?/gateway/mesh/dc/([^/]+)$"),
    re.compile(r"^(?:/ap/([^/]+))?/ns/([^/]+)/identity/([^/]+)$"),
)
_BAD_URL = re.compile(r"[\x00-\x1f\x7f]|%(?![0-9A-Fa-f]{2})")


def parse_service_identity(uri: str) -> ServiceIdentity:
    """Consul's ``ParseCertURI``, narrowed to what authorize accepts: a service's SPIFFE ID."""
    if _BAD_URL.search(uri):
        raise NotConnectIdentity(uri)
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise NotConnectIdentity(uri) from None
    if parts.scheme != "spiffe":
        raise NotConnectIdentity(uri)
    found = _SERVICE_PATH.match(parts.path)
    if found:
        partition, namespace, datacenter, service = (unquote(group or "") for group in found.groups())
        return ServiceIdentity(parts.netloc, partition, namespace, datacenter, service)
    if any(pattern.match(parts.path) for pattern in _OTHER_PATHS) or (not parts.path and parts.netloc.find(".") > 0):
        raise NotServiceIdentity(uri)
    raise NotConnectIdentity(uri)


def renewal_window(valid_after: float, valid_before: float, now: float) -> tuple[float, float]:
    """Consul's ``calculateSoftExpiry``: renew between 60 % and 90 % of the lifetime, at once after 90 %.

    Consul also renews at once when the lifetime is under ten minutes (it never issues such certs); the dev
    agent does issue them (``--leaf-cert-ttl 3s``), so that floor is left out.
    """
    lifetime = valid_before - valid_after
    soft = valid_after + 0.6 * lifetime
    hard = valid_after + 0.9 * lifetime
    if now >= hard:
        return now, now
    return max(soft, now), hard


def soft_expiry(valid_after: float, valid_before: float, now: float, rng: random.Random) -> float:
    """The moment to renew: a uniformly random point in the renewal window, so that leaves issued
    together do not all come back together."""
    low, high = renewal_window(valid_after, valid_before, now)
    return low + rng.random() * (high - low)


def colon_hex(data: bytes) -> str:
    """Consul's ``HexString``: lower-case hex bytes joined by colons (serials, fingerprints, key ids)."""
    return ":".join(f"{b:02x}" for b in data)


@dataclass(frozen=True)
class Root:
    """The CA's self-signed root and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    create_index: int
    modify_index: int

    @property
    def id(self) -> str:
        return colon_hex(self.cert.fingerprint(hashes.SHA1()))  # Consul: the SHA-1 fingerprint

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> str:
        return _key_pem(self.key)

    def to_json(self, trust_domain: str) -> dict[str, Any]:
        """One element of ``IndexedCARoots.Roots``."""
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        return {
            "ID": self.id,
            "Name": ROOT_NAME,
            "SerialNumber": self.cert.serial_number,
            "SigningKeyID": colon_hex(ski),
            "ExternalTrustDomain": trust_domain.removesuffix(".consul"),
            "NotBefore": _rfc3339(self.cert.not_valid_before_utc),
            "NotAfter": _rfc3339(self.cert.not_valid_after_utc),
            "RootCert": self.cert_pem,
            "IntermediateCerts": None,
            "Active": True,
            "PrivateKeyType": "ec",
            "PrivateKeyBits": 256,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass(frozen=True)
class Leaf:
    """An issued leaf, as the agent caches it: the ``IssuedCert`` fields plus when to renew it."""

    service: str
    service_uri: str
    serial_number: str
    cert_pem: str
    key_pem: str
    valid_after: float
    valid_before: float
    renew_at: float
    root_id: str
    create_index: int
    modify_index: int

    def to_json(self) -> dict[str, Any]:
        return {
            "SerialNumber": self.serial_number,
            "CertPEM": self.cert_pem,
            "PrivateKeyPEM": self.key_pem,
            "Service": self.service,
            "ServiceURI": self.service_uri,
            "ValidAfter": _rfc3339(datetime.fromtimestamp(self.valid_after, UTC)),
            "ValidBefore": _rfc3339(datetime.fromtimestamp(self.valid_before, UTC)),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


class ConnectCA:
    """The root, and one cached leaf per service name."""

    def __init__(
        self,
        index: RaftIndex,
        *,
        trust_domain: str,
        datacenter: str,
        leaf_ttl_s: float,
        now: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self._index = index
        self.trust_domain = trust_domain
        self._datacenter = datacenter
        self._leaf_ttl_s = leaf_ttl_s
        self.now = now
        self._rng = rng or random.Random()
        self._leaves: dict[str, Leaf] = {}
        self.root = self._new_root()

    @property
    def roots_index(self) -> int:
        """What a blocking roots query watches: the roots change only when the root does."""
        return self.root.modify_index

    def roots(self) -> dict[str, Any]:
        """The ``IndexedCARoots`` body."""
        return {
            "ActiveRootID": self.root.id,
            "TrustDomain": self.trust_domain,
            "Roots": [self.root.to_json(self.trust_domain)],
        }

    def leaf(self, service: str) -> Leaf:
        """The cached leaf for `service`, reissued first when it has expired, was signed by another root,
        or is past its soft expiry."""
        cached = self._leaves.get(service)
        now = self.now()
        if cached is None or cached.root_id != self.root.id or now >= min(cached.renew_at, cached.valid_before):
            cached = self._issue(service, now)
            self._leaves[service] = cached
        return cached

    def next_renewal_at(self, service: str) -> float | None:
        """When the cached leaf of `service` will be reissued (None: nothing cached). A blocking leaf query
        sleeps no longer than this, so it returns the renewed leaf without any other write waking it."""
        cached = self._leaves.get(service)
        return None if cached is None else min(cached.renew_at, cached.valid_before)

    def renewal_due_in(self, service: str) -> float | None:
        """Seconds until `next_renewal_at`, by the CA's own clock."""
        at = self.next_renewal_at(service)
        return None if at is None else max(0.0, at - self.now())

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """The trust domain and the root with its key, PEM-encoded; leaves are a cache and are not kept."""
        return {
            "trust_domain": self.trust_domain,
            "root": {
                "cert_pem": self.root.cert_pem,
                "key_pem": self.root.key_pem,
                "create_index": self.root.create_index,
                "modify_index": self.root.modify_index,
            },
        }

    def restore(self, data: dict[str, Any]) -> None:
        root = data.get("root")
        if not root:
            return
        key = serialization.load_pem_private_key(root["key_pem"].encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the stored Connect CA key is not an EC key")
        cert = x509.load_pem_x509_certificate(root["cert_pem"].encode())
        self.root = Root(cert, key, int(root["create_index"]), int(root["modify_index"]))
        self.trust_domain = data.get("trust_domain", self.trust_domain)
        self._leaves.clear()

    # ------------------------------------------------------------------ signing

    def _new_root(self) -> Root:
        key = ec.generate_private_key(ec.SECP256R1())
        key_id = _key_id(key.public_key())
        unique = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"pri-{unique}.consul.ca.{self.trust_domain[:8]}.consul")]
        )
        not_before = datetime.fromtimestamp(math.floor(self.now() - CLOCK_DRIFT_S), UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(secrets.randbelow(2**63 - 1) + 1)
            .not_valid_before(not_before)
            .not_valid_after(not_before + timedelta(seconds=ROOT_TTL_S))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier(key_id), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(key_id, None, None), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}")]),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        index = self._index.advance()
        return Root(cert, key, index, index)

    def _issue(self, service: str, now: float) -> Leaf:
        if not service:
            raise ValueError("URI must be either service, agent, server, or kind")
        backdate = min(CLOCK_DRIFT_S, self._leaf_ttl_s / 10)
        valid_after = math.floor(now - backdate)
        valid_before = max(valid_after + 1, math.floor(now - backdate + self._leaf_ttl_s))
        uri = spiffe_service_uri(self.trust_domain, self._datacenter, service)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
        dns_name = identity_dns_name(service, NAMESPACE, self._datacenter, self.trust_domain)
        if dns_name.isascii() and " " not in dns_name:
            names.append(x509.DNSName(dns_name))
        key = ec.generate_private_key(ec.SECP256R1())
        serial = secrets.randbelow(2**63 - 1) + 1
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service_cn(service, NAMESPACE, self.trust_domain))])
            )
            .issuer_name(self.root.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(datetime.fromtimestamp(valid_after, UTC))
            .not_valid_after(datetime.fromtimestamp(valid_before, UTC))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier(_key_id(key.public_key())), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(_key_id(self.root.key.public_key()), None, None), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self.root.key, hashes.SHA256())
        )
        index = self._index.advance()
        return Leaf(
            service=service,
            service_uri=uri,
            serial_number=colon_hex(serial.to_bytes((serial.bit_length() + 7) // 8, "big")),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=_key_pem(key),
            valid_after=valid_after,
            valid_before=valid_before,
            renew_at=soft_expiry(valid_after, valid_before, now, self._rng),
            root_id=self.root.id,
            create_index=index,
            modify_index=index,
        )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """A root signs certificates; a leaf signs handshakes and (as Consul's leaves allow) agrees keys."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """Consul's ``KeyId``: SHA-256 of the DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """``-----BEGIN EC PRIVATE KEY-----``, the SEC 1 form Consul hands out."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
