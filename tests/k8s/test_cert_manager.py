"""The cert-manager overlay's Certificates, issued as cert-manager would issue them from their specs (the SANs,
key and usages they ask for, signed by the overlay's CA), are material meshlet's ``tls.source: files`` accepts:
the URI SAN is the service's identity and the DNS SAN is the name meshlet's clients check for that service."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlet.security.certs import TlsMaterial
from meshlet.security.identity import identity_dns_name
from tests.k8s.manifests import Obj, named, render

USAGES = {"server auth": ExtendedKeyUsageOID.SERVER_AUTH, "client auth": ExtendedKeyUsageOID.CLIENT_AUTH}


def issue(
    spec: Obj, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """What cert-manager makes of a Certificate spec: ECDSA P-256 key, CN, SANs, CA flag, extended key usages."""
    assert (spec["privateKey"]["algorithm"], spec["privateKey"]["size"]) == ("ECDSA", 256)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec["commonName"])])
    signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=24))
        .add_extension(x509.BasicConstraints(ca=bool(spec.get("isCA")), path_length=None), critical=True)
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in spec.get("uris", [])]
    sans += [x509.DNSName(d) for d in spec.get("dnsNames", [])]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    usages = [USAGES[u] for u in spec.get("usages", []) if u in USAGES]
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("service", ["gateway", "orders", "inventory", "payments", "edge"])
def test_a_certificate_from_the_overlay_is_accepted_as_the_services_identity(service: str) -> None:
    certificates = named(render("cert-manager"), "Certificate")
    ca_cert, ca_key = issue(certificates["meshlet-ca"]["spec"], None)
    spec = certificates[service]["spec"]
    leaf, key = issue(spec, (ca_cert, ca_key))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    material = TlsMaterial.from_pem(pem(leaf), key_pem, pem(ca_cert))
    identity = material.identity
    assert identity.service == service
    assert identity.datacenter == "dc1"
    # A client checks this DNS name for the upstream it dials (its own namespace and trust domain, dc1).
    assert material.identity_dns_name == identity_dns_name(service, identity.namespace, "dc1", identity.trust_domain)
