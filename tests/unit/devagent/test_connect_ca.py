"""The Connect CA with an injected clock and rng: Consul's soft-expiry window, when a cached leaf is
reissued, what a leaf certificate says, and SPIFFE ID parsing for authorize."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlet.devagent.connect_ca import (
    ConnectCA,
    NotConnectIdentity,
    NotServiceIdentity,
    ServiceIdentity,
    identity_dns_name,
    parse_service_identity,
    renewal_window,
    service_cn,
    soft_expiry,
)
from meshlet.devagent.raft import RaftIndex

TRUST_DOMAIN = "0b6f2d1e-8c4f-4e55-9f0a-3d2c1b0a9e8f.consul"
HOUR = 3600.0


class Clock:
    """Wall-clock seconds that only move when the test says so."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class FixedRng(random.Random):
    """`random()` always answers `value`, so the soft expiry lands exactly where the test expects."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def make_ca(clock: Clock, *, ttl_s: float = 72 * HOUR, rng: random.Random | None = None) -> ConnectCA:
    return ConnectCA(
        RaftIndex(), trust_domain=TRUST_DOMAIN, datacenter="dc1", leaf_ttl_s=ttl_s, now=clock, rng=rng or FixedRng(0.5)
    )


# ------------------------------------------------------------------------------------------ soft expiry


def test_a_fresh_leaf_renews_between_60_and_90_percent_of_its_life() -> None:
    assert renewal_window(1000.0, 2000.0, now=1000.0) == (1600.0, 1900.0)


def test_inside_the_soft_window_the_earliest_renewal_is_now() -> None:
    assert renewal_window(1000.0, 2000.0, now=1700.0) == (1700.0, 1900.0)


def test_past_90_percent_or_expired_renews_at_once() -> None:
    assert renewal_window(1000.0, 2000.0, now=1950.0) == (1950.0, 1950.0)
    assert renewal_window(1000.0, 2000.0, now=2500.0) == (2500.0, 2500.0)


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 1600.0), (0.5, 1750.0), (0.999, 1899.7)])
def test_soft_expiry_is_drawn_uniformly_from_the_window(draw: float, expected: float) -> None:
    assert soft_expiry(1000.0, 2000.0, 1000.0, FixedRng(draw)) == pytest.approx(expected)


def test_soft_expiry_with_a_real_rng_stays_in_the_window() -> None:
    rng = random.Random(7)
    draws = [soft_expiry(0.0, 100.0, 0.0, rng) for _ in range(200)]
    assert all(60.0 <= d <= 90.0 for d in draws)
    assert max(draws) - min(draws) > 20  # spread out, not one thundering herd


# ------------------------------------------------------------------------------------------ the leaf cache


def test_the_cached_leaf_is_served_until_its_soft_expiry() -> None:
    clock = Clock()
    ca = make_ca(clock, ttl_s=100.0)
    first = ca.leaf("orders")
    assert first.renew_at == pytest.approx(first.valid_after + 0.75 * (first.valid_before - first.valid_after))
    clock.now = first.renew_at - 0.001
    assert ca.leaf("orders") is first
    assert ca.next_renewal_at("orders") == first.renew_at
    assert ca.renewal_due_in("orders") == pytest.approx(0.001, abs=1e-6)


def test_past_its_soft_expiry_the_leaf_is_reissued_with_a_new_serial_and_index() -> None:
    clock = Clock()
    ca = make_ca(clock, ttl_s=100.0)
    first = ca.leaf("orders")
    clock.now = first.renew_at
    second = ca.leaf("orders")
    assert second.serial_number != first.serial_number
    assert second.modify_index > first.modify_index
    assert second.valid_before > first.valid_before


def test_an_expired_leaf_is_reissued_whatever_its_soft_expiry() -> None:
    clock = Clock()
    ca = make_ca(clock, ttl_s=100.0, rng=FixedRng(0.999999))
    first = ca.leaf("orders")
    clock.now = first.valid_before + 1
    assert ca.leaf("orders").serial_number != first.serial_number


def test_a_leaf_signed_by_another_root_is_reissued() -> None:
    clock = Clock()
    ca = make_ca(clock)
    first = ca.leaf("orders")
    ca.restore(make_ca(clock).snapshot())
    second = ca.leaf("orders")
    assert second.serial_number != first.serial_number
    assert second.root_id == ca.root.id != first.root_id


def test_each_service_has_its_own_leaf_and_unknown_ones_have_no_renewal() -> None:
    ca = make_ca(Clock())
    assert ca.next_renewal_at("orders") is None
    assert ca.renewal_due_in("orders") is None
    assert ca.leaf("orders").service != ca.leaf("payments").service


def test_a_short_ttl_still_leaves_a_renewal_window_before_expiry() -> None:
    """``--leaf-cert-ttl 3s``: whole-second validity and the backdate must not eat the whole lifetime."""
    clock = Clock(1_750_000_000.95)
    leaf = make_ca(clock, ttl_s=3.0).leaf("orders")
    assert leaf.valid_after <= clock.now < leaf.renew_at < leaf.valid_before
    assert leaf.valid_before - leaf.valid_after == 3


# ------------------------------------------------------------------------------------------ certificates


def test_the_leaf_is_a_spiffe_certificate_signed_by_the_root() -> None:
    clock = Clock()
    ca = make_ca(clock)
    leaf = ca.leaf("Orders")
    cert = x509.load_pem_x509_certificate(leaf.cert_pem.encode())
    root = ca.root.cert
    root_key = root.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    root_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    assert cert.issuer == root.subject
    assert cert.not_valid_before_utc <= datetime.fromtimestamp(clock.now, UTC) < cert.not_valid_after_utc
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uri = f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/Orders"
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [uri] == [leaf.service_uri]
    assert sans.get_values_for_type(x509.DNSName) == [f"orders.svc.default.ns.dc1.dc.{TRUST_DOMAIN}"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "orders.svc.default.0b6f2d1e.consul"
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.digital_signature, usage.key_encipherment, usage.key_agreement) == (True, True, True)
    assert usage.key_cert_sign is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.serial_number == ":".join(f"{b:02x}" for b in cert.serial_number.to_bytes(8, "big").lstrip(b"\0"))
    key = serialization.load_pem_private_key(leaf.key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert key.public_key() == cert.public_key()
    assert leaf.key_pem.startswith("-----BEGIN EC PRIVATE KEY-----")


def test_the_root_is_a_p256_ca_named_by_the_trust_domain() -> None:
    ca = make_ca(Clock())
    root = ca.root.cert
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    sans = root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TRUST_DOMAIN}"]
    body = ca.roots()
    assert body["ActiveRootID"] == body["Roots"][0]["ID"]
    assert body["ActiveRootID"] == ":".join(f"{b:02x}" for b in root.fingerprint(hashes.SHA1()))
    assert body["TrustDomain"] == TRUST_DOMAIN
    assert body["Roots"][0]["ExternalTrustDomain"] == TRUST_DOMAIN.removesuffix(".consul")
    assert (body["Roots"][0]["PrivateKeyType"], body["Roots"][0]["PrivateKeyBits"]) == ("ec", 256)


def test_the_root_and_trust_domain_survive_a_snapshot() -> None:
    clock = Clock()
    ca = make_ca(clock)
    again = ConnectCA(RaftIndex(), trust_domain="other.consul", datacenter="dc1", leaf_ttl_s=HOUR, now=clock)
    again.restore(ca.snapshot())
    assert again.roots() == ca.roots()
    leaf = x509.load_pem_x509_certificate(again.leaf("orders").cert_pem.encode())
    assert leaf.issuer == ca.root.cert.subject


def test_identity_dns_name_is_lower_case_and_fixed_in_format() -> None:
    assert identity_dns_name("Orders", "default", "DC1", "ABC.consul") == "orders.svc.default.ns.dc1.dc.abc.consul"


def test_service_cn_is_sanitised_and_fits_in_64_characters() -> None:
    assert service_cn("my_Service-1", "default", TRUST_DOMAIN) == "myservice1.svc.default.0b6f2d1e.consul"
    long = service_cn("x" * 100, "default", TRUST_DOMAIN)
    assert len(long) == 64
    assert long.endswith(".svc.default.0b6f2d1e.consul")


# ------------------------------------------------------------------------------------------ SPIFFE IDs


def test_a_service_spiffe_id_parses_into_its_parts() -> None:
    assert parse_service_identity("spiffe://td.consul/ns/default/dc/dc1/svc/web") == ServiceIdentity(
        "td.consul", "", "default", "dc1", "web"
    )
    assert parse_service_identity("spiffe://td.consul/ap/p1/ns/ns1/dc/dc1/svc/we%2Fb").service == "we/b"
    assert parse_service_identity("spiffe://td.consul/ap/p1/ns/ns1/dc/dc1/svc/web").partition == "p1"


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://td.consul/agent/client/dc/dc1/id/node-1",
        "spiffe://td.consul/agent/server/dc/dc1",
        "spiffe://td.consul/gateway/mesh/dc/dc1",
        "spiffe://td.consul",
    ],
)
def test_other_connect_identities_are_not_services(uri: str) -> None:
    with pytest.raises(NotServiceIdentity):
        parse_service_identity(uri)


@pytest.mark.parametrize(
    "uri",
    ["", "web", "https://td.consul/ns/default/dc/dc1/svc/web", "spiffe://td.consul/svc/web", "spiffe://x/%zz"],
)
def test_anything_else_is_not_a_connect_identity(uri: str) -> None:
    with pytest.raises(NotConnectIdentity) as refused:
        parse_service_identity(uri)
    assert not isinstance(refused.value, NotServiceIdentity)
