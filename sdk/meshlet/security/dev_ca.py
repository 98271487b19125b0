"""The dev CA behind ``meshlet certs``: a self-signed EC P-256 root in ``DIR/ca.crt`` and ``DIR/ca.key``, and
service certificates signed by it in ``DIR/<service>.crt`` and ``DIR/<service>.key`` for ``tls.source:
files``. For local runs and tests; in Kubernetes the Consul Connect CA or mounted secrets supply certificates.

A leaf names its service as Consul's Connect CA does, by the SPIFFE ID in its URI SAN, and also by the
identity DNS SAN that grpcio clients can verify (see :mod:`meshlet.security.identity`). Files are replaced
atomically, key before certificate, so a process watching them for rotation never reads half a file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlet.config import parse_duration
from meshlet.security.identity import DEFAULT_NAMESPACE, InvalidSpiffeId, SpiffeId, check_trust_domain

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
DEFAULT_TRUST_DOMAIN = "meshlet.local"
CA_TTL_S = 10 * 365 * 86400.0  # Consul's RootCertTTL default, ten years
LEAF_TTL_S = 86400.0  # Linkerd, Istio and Dapr issue 24-hour workload certificates (Consul: 72h)
CLOCK_DRIFT_S = 60.0  # Consul backdates what it signs by a minute so peers with a slow clock accept it
Clock = Callable[[], float]  # wall-clock seconds since the epoch (certificate validity is wall time)


class DevCaError(Exception):
    """A request the dev CA refuses; the message says what to do instead."""


@dataclass(frozen=True)
class CaFiles:
    """What ``init_ca`` wrote: the root (share it as the trust bundle, ``tls.ca``) and its key (keep it)."""

    cert: Path
    key: Path
    trust_domain: str
    not_after: datetime


@dataclass(frozen=True)
class IssuedCert:
    """What ``issue`` wrote: ``tls.cert`` and ``tls.key`` for `identity`, valid until `not_after`."""

    cert: Path
    key: Path
    identity: SpiffeId
    not_after: datetime


def init_ca(
    directory: str | os.PathLike[str],
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    *,
    force: bool = False,
    now: Clock = time.time,
) -> CaFiles:
    """Create the CA in `directory` (made if missing). An existing CA is kept unless `force`: replacing it
    invalidates every certificate it issued."""
    check_trust_domain(trust_domain)
    folder = Path(directory)
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    existing = [path for path in (cert_path, key_path) if path.exists()]
    if existing and not force:
        raise DevCaError(
            f"{existing[0]} already exists; keep it, or pass --force to replace the CA "
            "(certificates it issued stop being trusted)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshlet dev CA {trust_domain}"[:64])])
    not_before = _at(now() - CLOCK_DRIFT_S)
    cert = (
        _builder(name, name, key.public_key(), not_before, not_before + timedelta(seconds=CA_TTL_S))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        # The trust domain as a SPIFFE ID, as Consul's roots carry it; issue() reads it back from here.
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    _write(key_path, _key_pem(key), mode=0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return CaFiles(cert_path, key_path, trust_domain, cert.not_valid_after_utc)


def issue(
    directory: str | os.PathLike[str],
    service: str,
    namespace: str = DEFAULT_NAMESPACE,
    datacenter: str = "dc1",
    ttl_s: float = LEAF_TTL_S,
    *,
    now: Clock = time.time,
) -> IssuedCert:
    """Sign a new key for `service` with the CA in `directory`, replacing any earlier certificate of it
    (reissuing is how a file-based rotation starts). Valid from a minute ago until `ttl_s` from now."""
    if not ttl_s > 0:
        raise DevCaError(f"the lifetime must be positive, not {ttl_s}s; use a duration such as 24h")
    folder = Path(directory)
    ca_cert, ca_key = _load_ca(folder)
    identity = SpiffeId.for_service(
        service, namespace=namespace, datacenter=datacenter, trust_domain=_trust_domain_of(ca_cert)
    )
    issued_at = now()
    not_after = _at(issued_at + ttl_s)
    if not_after > ca_cert.not_valid_after_utc:
        raise DevCaError(f"the CA in {folder} expires before {not_after:%Y-%m-%d}; shorten --ttl or renew the CA")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)])
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), _at(issued_at - CLOCK_DRIFT_S), not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(identity.uri), x509.DNSName(identity.dns_name)]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{service}.crt", folder / f"{service}.key"
    _write(key_path, _key_pem(key), mode=0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return IssuedCert(cert_path, key_path, identity, not_after)


# ---------------------------------------------------------------------------------------------- the CLI


def certs_main(argv: list[str]) -> int:
    """``meshlet certs init|issue ...``; `argv` is what follows ``certs``. Exit 2 with one line on bad input."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        if args.command == "init":
            ca = init_ca(args.dir, args.trust_domain, force=args.force)
            print(f"wrote {ca.cert} and {ca.key} (trust domain {ca.trust_domain}, expires {ca.not_after:%Y-%m-%d})")
        else:
            leaf = issue(args.dir, args.service, args.ns, args.dc, args.ttl)
            print(
                f"wrote {leaf.cert} and {leaf.key} for {leaf.identity} "
                f"(DNS {leaf.identity.dns_name}, expires {leaf.not_after:%Y-%m-%dT%H:%M:%SZ})"
            )
    except (DevCaError, InvalidSpiffeId) as exc:
        print(f"meshlet certs {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"meshlet certs {args.command}: {exc.filename or args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage block: what is wrong and where the help is."""
        self.exit(2, f"{self.prog}: {message}; see '{self.prog} --help'\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="meshlet certs", description="A dev CA that issues SPIFFE certificates for local runs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{init,issue}")
    init = commands.add_parser("init", help="create DIR/ca.crt and DIR/ca.key")
    init.add_argument("dir", metavar="DIR", type=Path)
    init.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, help="default: %(default)s")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    cert = commands.add_parser("issue", help="write DIR/SERVICE.crt and DIR/SERVICE.key signed by DIR's CA")
    cert.add_argument("dir", metavar="DIR", type=Path)
    cert.add_argument("service", metavar="SERVICE")
    cert.add_argument("--ns", default=DEFAULT_NAMESPACE, help="namespace (default: %(default)s)")
    cert.add_argument("--dc", default="dc1", help="datacenter (default: %(default)s)")
    cert.add_argument("--ttl", type=_ttl, default=LEAF_TTL_S, metavar="DURATION", help="lifetime (default: 24h)")
    return parser


def _ttl(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration; use one such as 24h, 90m or 30s")
    return seconds


# ---------------------------------------------------------------------------------------------- helpers


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise DevCaError(
            f"no dev CA in {folder} ({exc.filename} is missing); run 'meshlet certs init {folder}'"
        ) from None
    except ValueError:
        raise DevCaError(
            f"{folder / CA_CERT} or {folder / CA_KEY} is not PEM; run 'meshlet certs init {folder} --force'"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise DevCaError(
            f"{folder / CA_KEY} is not the key of {folder / CA_CERT}; run 'meshlet certs init {folder} --force'"
        )
    return cert, key


def _trust_domain_of(ca_cert: x509.Certificate) -> str:
    try:
        san = ca_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri.removeprefix("spiffe://").rstrip("/")
    raise DevCaError(
        "the CA certificate names no spiffe:// trust domain; recreate it with 'meshlet certs init --force'"
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; an EC leaf only signs handshakes."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(int(seconds), UTC)


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Replace `path` atomically; the temporary file has `mode` before it holds a byte."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)  # the umask may have narrowed it: a key is 0600, a cert world-readable
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
