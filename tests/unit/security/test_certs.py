"""TLS material is checked before any handshake depends on it, names the file or source at fault, and never
shows its key; a peer's SPIFFE ID is read from grpc's auth context; clients verify their upstream by name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshlet.devagent.connect_ca import service_cn
from meshlet.security.certs import (
    TlsConfigError,
    TlsMaterial,
    channel_options,
    colon_hex,
    consul_service_cn,
    peer_spiffe_id,
)

ORDERS = "spiffe://meshlet.test/ns/default/dc/dc1/svc/orders"
ORDERS_DNS = "orders.svc.default.ns.dc1.dc.meshlet.test"
NOW = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def make_ca(name: str = "test root", issuer: Issued | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, issuer.cert.subject if issuer else subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer.key if issuer else key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_leaf(
    ca: Issued, *, uris: tuple[str, ...] = (ORDERS,), dns: tuple[str, ...] = (ORDERS_DNS,), cn: str = "x"
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    builder = _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), ca.cert.subject, key)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(hours=24))
    )


def material(leaf: Issued, *cas: Issued, chain: tuple[Issued, ...] = ()) -> TlsMaterial:
    return TlsMaterial.from_pem(
        leaf.cert_pem + b"".join(c.cert_pem for c in chain),
        leaf.key_pem,
        b"".join(ca.cert_pem for ca in cas),
        cert_origin="certs/orders.crt",
        key_origin="certs/orders.key",
        ca_origin="certs/ca.crt",
    )


def test_material_carries_the_leafs_identity_serial_and_expiry() -> None:
    ca = make_ca()
    leaf = make_leaf(ca)
    loaded = material(leaf, ca)
    assert loaded.spiffe_id == ORDERS
    assert loaded.serial == colon_hex(leaf.cert.serial_number)
    assert loaded.not_after == (NOW + timedelta(hours=24)).timestamp()
    assert loaded.identity.service == "orders"
    assert loaded.identity_dns_name == ORDERS_DNS


def test_serial_is_spelled_as_consul_spells_it() -> None:
    assert colon_hex(0x081A) == "08:1a"
    assert colon_hex(0) == "00"


def test_key_of_another_certificate_is_refused_naming_both_files() -> None:
    ca = make_ca()
    leaf, other = make_leaf(ca), make_leaf(ca)
    with pytest.raises(TlsConfigError, match=r"private key in certs/orders.key does not match .* certs/orders.crt"):
        TlsMaterial.from_pem(leaf.cert_pem, other.key_pem, ca.cert_pem, cert_origin="certs/orders.crt",
                             key_origin="certs/orders.key")  # fmt: skip


def test_leaf_listed_after_its_intermediate_is_refused() -> None:
    """grpc presents the first certificate of the chain, so the leaf must come first."""
    root = make_ca()
    intermediate = make_ca("intermediate", issuer=root)
    leaf = make_leaf(intermediate)
    with pytest.raises(TlsConfigError, match="leaf first"):
        TlsMaterial.from_pem(intermediate.cert_pem + leaf.cert_pem, leaf.key_pem, root.cert_pem)


def test_certificate_without_spiffe_uri_is_refused() -> None:
    ca = make_ca()
    with pytest.raises(TlsConfigError, match=r"certs/orders.crt has no spiffe:// URI SAN.*meshlet certs issue"):
        material(make_leaf(ca, uris=()), ca)


def test_certificate_without_any_san_is_refused_with_the_same_message() -> None:
    ca = make_ca()
    with pytest.raises(TlsConfigError, match=r"certs/orders.crt has no spiffe:// URI SAN"):
        material(make_leaf(ca, uris=(), dns=()), ca)


def test_certificate_naming_no_service_is_refused() -> None:
    ca = make_ca()
    with pytest.raises(TlsConfigError, match="names no service"):
        material(make_leaf(ca, uris=("spiffe://meshlet.test/agent/client/dc/dc1/id/node",)), ca)


@pytest.mark.parametrize(
    ("part", "origin"), [("cert", "certs/orders.crt"), ("key", "certs/orders.key"), ("ca", "certs/ca.crt")]
)
def test_unreadable_pem_is_refused_naming_where_it_came_from(part: str, origin: str) -> None:
    ca = make_ca()
    leaf = make_leaf(ca)
    parts = {"cert": leaf.cert_pem, "key": leaf.key_pem, "ca": ca.cert_pem} | {part: b"not a PEM file\n"}
    with pytest.raises(TlsConfigError, match=origin):
        TlsMaterial.from_pem(parts["cert"], parts["key"], parts["ca"], cert_origin="certs/orders.crt",
                             key_origin="certs/orders.key", ca_origin="certs/ca.crt")  # fmt: skip


def test_passphrase_protected_key_is_refused_with_what_to_write_instead() -> None:
    ca = make_ca()
    leaf = make_leaf(ca)
    encrypted = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(TlsConfigError, match="without a passphrase"):
        TlsMaterial.from_pem(leaf.cert_pem, encrypted, ca.cert_pem)


def test_certificate_from_another_ca_is_refused() -> None:
    ours, theirs = make_ca("ours"), make_ca("theirs")
    with pytest.raises(TlsConfigError, match=r"issuer 'CN=theirs'.*does not chain to any CA in certs/ca.crt"):
        material(make_leaf(theirs), ours)


def test_bundle_with_old_and_new_roots_accepts_a_leaf_of_either() -> None:
    old, new = make_ca("old root"), make_ca("new root")
    for signer in (old, new):
        assert material(make_leaf(signer), old, new).trust_bundle_pem.count(b"BEGIN CERTIFICATE") == 2


def test_leaf_issued_by_an_intermediate_in_its_chain_is_accepted() -> None:
    root = make_ca()
    intermediate = make_ca("intermediate", issuer=root)
    assert material(make_leaf(intermediate), root, chain=(intermediate,)).spiffe_id == ORDERS


def test_intermediate_missing_from_the_chain_is_refused() -> None:
    root = make_ca()
    intermediate = make_ca("intermediate", issuer=root)
    with pytest.raises(TlsConfigError, match="does not chain"):
        material(make_leaf(intermediate), root)


def test_repr_shows_identity_and_serial_but_never_the_key() -> None:
    ca = make_ca()
    leaf = make_leaf(ca)
    text = repr(material(leaf, ca))
    assert ORDERS in text
    assert colon_hex(leaf.cert.serial_number) in text
    assert "2030-01-02T00:00:00Z" in text
    assert "PRIVATE" not in text
    assert "BEGIN" not in text


def test_uri_only_leaf_like_a_real_consuls_has_no_identity_dns_name() -> None:
    ca = make_ca()
    assert material(make_leaf(ca, dns=()), ca).identity_dns_name is None
    assert material(make_leaf(ca, dns=("orders.example.com",)), ca).identity_dns_name is None


# ---------------------------------------------------------------------------------------------- peers

# What grpc.aio's ServicerContext.auth_context() returned for a mutual-TLS caller (grpcio 1.85).
MEASURED = {
    "transport_security_type": [b"ssl"],
    "x509_subject_alternative_name": [ORDERS.encode(), ORDERS_DNS.encode()],
    "peer_uri": [ORDERS.encode()],
    "peer_dns": [ORDERS_DNS.encode()],
    "peer_spiffe_id": [ORDERS.encode()],
    "x509_common_name": [b"orders"],
    "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"],
}


def test_callers_spiffe_id_is_read_from_the_auth_context() -> None:
    assert peer_spiffe_id(MEASURED) == ORDERS


def test_callers_spiffe_id_is_read_from_peer_uri_when_grpc_gives_no_spiffe_key() -> None:
    context = {k: v for k, v in MEASURED.items() if k != "peer_spiffe_id"}
    context["peer_uri"] = [b"https://example.com/not-spiffe", ORDERS.encode()]
    assert peer_spiffe_id(context) == ORDERS


def test_plaintext_or_ambiguous_caller_has_no_spiffe_id() -> None:
    assert peer_spiffe_id({}) is None
    assert peer_spiffe_id({"transport_security_type": [b"insecure"], "security_level": [b"TSI_SECURITY_NONE"]}) is None
    two = [ORDERS.encode(), b"spiffe://meshlet.test/ns/default/dc/dc1/svc/admin"]
    assert peer_spiffe_id({"peer_uri": two}) is None


# ---------------------------------------------------------------------------------------------- upstreams


def test_client_expects_the_upstreams_identity_dns_name() -> None:
    assert channel_options("orders", "default", "dc1", "meshlet.test") == (
        ("grpc.ssl_target_name_override", ORDERS_DNS),
    )


def test_client_of_a_uri_only_ca_expects_consuls_common_name() -> None:
    options = channel_options("orders", "default", "dc1", "11111111-2222.consul", by_common_name=True)
    assert options == (("grpc.ssl_target_name_override", "orders.svc.default.11111111.consul"),)


@pytest.mark.parametrize("service", ["orders", "Web_API", "a" * 80, "svc-with-dashes"])
def test_consul_common_name_agrees_with_the_dev_agents(service: str) -> None:
    trust_domain = "0f9a3c5e-7b1d-4e2a-9c3b-5d6e7f8a9b0c.consul"
    assert consul_service_cn(service, "default", trust_domain) == service_cn(service, "default", trust_domain)
    assert len(consul_service_cn(service, "default", trust_domain)) <= 64
