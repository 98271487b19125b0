"""Certificates a well-behaved mesh CA would never issue, crafted with `cryptography` under a trusted test CA: a
SPIFFE ID only in the common name or a DNS or e-mail SAN, two URI SANs, a leaf through an intermediate, another
trust domain. Each is written as ``<name>.crt`` / ``<name>.key`` beside the CA's ``ca.crt``, as the dev CA does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issuer:
    """A CA that signs: its certificate and key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, folder: Path) -> Issuer:
        """The dev CA in `folder` (``meshlet certs init``; the first certificate of its ``ca.crt``)."""
        return cls.load_named(folder, "ca")

    @classmethod
    def load_named(cls, folder: Path, name: str) -> Issuer:
        """The CA written as ``<name>.crt`` and ``<name>.key`` in `folder`."""
        key = serialization.load_pem_private_key((folder / f"{name}.key").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(x509.load_pem_x509_certificate((folder / f"{name}.crt").read_bytes()), key)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
    )


def root_ca(name: str, trust_domain: str, *, path_length: int | None = 0, uri: str | None = None) -> Issuer:
    """A self-signed root (the dev CA's shape: ``pathLenConstraint`` 0 unless said otherwise) whose URI SAN is its
    trust domain, or `uri`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(name, subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri or f"spiffe://{trust_domain}")]), False
        )
        .sign(key, hashes.SHA256())
    )
    return Issuer(cert, key)


def intermediate(issuer: Issuer, name: str = "meshlet test intermediate") -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, issuer.cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issuer(cert, key)


def leaf(
    issuer: Issuer,
    *,
    common_name: str = "crafted",
    uris: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    emails: tuple[str, ...] = (),
) -> tuple[bytes, bytes]:
    """A client-and-server leaf signed by `issuer` with exactly these names: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        *(x509.UniformResourceIdentifier(uri) for uri in uris),
        *(x509.DNSName(name) for name in dns),
        *(x509.RFC822Name(email) for email in emails),
    ]
    builder = (
        _builder(common_name, issuer.cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer.key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write(folder: Path, name: str, cert_chain_pem: bytes, key_pem: bytes) -> Path:
    """``<name>.crt`` (the chain, leaf first) and ``<name>.key`` in `folder`; returns the certificate's path."""
    (folder / f"{name}.crt").write_bytes(cert_chain_pem)
    (folder / f"{name}.key").write_bytes(key_pem)
    return folder / f"{name}.crt"


def _usage(*, ca: bool) -> x509.KeyUsage:
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
