"""SPIFFE IDs in Consul's format and the identity DNS name: what a peer's URI SAN parses to, what is refused
and why, and that the dev agent's Connect CA writes the very names this module reads."""

from __future__ import annotations

import random

import pytest
from cryptography import x509

from meshlet.devagent import connect_ca
from meshlet.devagent.raft import RaftIndex
from meshlet.security.identity import InvalidSpiffeId, SpiffeId, identity_dns_name

CONSUL_TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"
ORDERS = f"spiffe://{CONSUL_TRUST_DOMAIN}/ns/default/dc/dc1/svc/orders"


def test_a_consul_leaf_uri_parses_into_its_parts() -> None:
    identity = SpiffeId.parse(ORDERS)
    assert identity == SpiffeId(CONSUL_TRUST_DOMAIN, "default", "dc1", "orders")
    assert (identity.service, identity.namespace, identity.datacenter) == ("orders", "default", "dc1")
    assert str(identity) == identity.uri == ORDERS
    assert repr(identity) == f"SpiffeId({ORDERS!r})"


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://meshlet.local/ns/shop/dc/eu-west-1/svc/payments",
        "spiffe://meshlet.local/ns/default/dc/dc1/svc/web%20app",
        "spiffe://meshlet.local/ap/team-a/ns/default/dc/dc1/svc/orders",
    ],
)
def test_formatting_a_parsed_id_gives_back_the_same_uri(uri: str) -> None:
    assert SpiffeId.parse(uri).uri == uri


def test_percent_encoded_segments_are_decoded_as_consul_writes_them() -> None:
    identity = SpiffeId.parse("spiffe://meshlet.local/ns/default/dc/dc1/svc/web%20app%C3%A9")
    assert identity.service == "web appé"
    assert identity.uri.endswith("/svc/web%20app%C3%A9")


def test_the_default_partition_is_the_same_identity_as_none_and_another_partition_is_not() -> None:
    plain = SpiffeId.parse("spiffe://meshlet.local/ns/default/dc/dc1/svc/orders")
    assert SpiffeId.parse("spiffe://meshlet.local/ap/default/ns/default/dc/dc1/svc/orders") == plain
    other = SpiffeId.parse("spiffe://meshlet.local/ap/team-a/ns/default/dc/dc1/svc/orders")
    assert other.partition == "team-a"
    assert other != plain


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("https://meshlet.local/ns/default/dc/dc1/svc/orders", "scheme must be spiffe://"),
        ("spiffe:///ns/default/dc/dc1/svc/orders", "trust domain ''"),
        ("spiffe://Meshlet.Local/ns/default/dc/dc1/svc/orders", "lower-case"),
        ("spiffe://meshlet.local/ns/default/dc/dc1/svc/orders?x=1", "no query or fragment"),
        ("spiffe://meshlet.local/agent/client/dc/dc1/id/node-1", "not a service"),
        ("spiffe://meshlet.local", "not a service"),
        ("spiffe://meshlet.local/ns/default/svc/orders", "/ns/<namespace>/dc/<datacenter>/svc/<service>"),
        ("spiffe://meshlet.local/ns/default/dc/dc1/svc/orders/extra", "/ns/<namespace>/dc/<datacenter>/svc/<service>"),
        ("spiffe://meshlet.local/ns/default/dc/dc1/svc/..", "not '.' or '..'"),
        ("spiffe://meshlet.local/ns/default/dc/dc1/svc/a%2Fb", "without '/'"),
        ("spiffe://meshlet.local/ns/default/dc/dc1/svc/%zz", "two hex digits"),
        ("spiffe://meshlet.local/ns/default/dc/dc1/svc/%FF", "UTF-8"),
        ("spiffe://meshlet.local/ns/default/dc/dc1/svc/" + "a" * 2048, "2048 bytes"),
    ],
)
def test_a_uri_that_is_not_a_service_identity_is_refused_saying_why(uri: str, why: str) -> None:
    with pytest.raises(InvalidSpiffeId, match=r"is not a service SPIFFE ID|longer than") as refused:
        SpiffeId.parse(uri)
    assert why in str(refused.value)


def test_parsing_the_same_peer_uri_again_reuses_the_first_answer() -> None:
    """A connection presents one URI SAN on every call; identifying the caller must not re-parse it."""
    assert SpiffeId.parse(ORDERS) is SpiffeId.parse(ORDERS)


def test_the_identity_dns_name_is_the_spiffe_id_read_as_a_lower_case_dns_name() -> None:
    assert (
        identity_dns_name("Orders", "default", "DC1", "Meshlet.Local") == "orders.svc.default.ns.dc1.dc.meshlet.local"
    )
    assert SpiffeId.parse(ORDERS).dns_name == f"orders.svc.default.ns.dc1.dc.{CONSUL_TRUST_DOMAIN}"


def test_an_identity_to_issue_must_be_made_of_dns_labels() -> None:
    issued = SpiffeId.for_service("orders", namespace="shop", datacenter="eu-1", trust_domain="meshlet.local")
    assert issued.uri == "spiffe://meshlet.local/ns/shop/dc/eu-1/svc/orders"
    for service in ("Orders", "web_app", "-orders", "a" * 64, ""):
        with pytest.raises(InvalidSpiffeId, match="is not a DNS label: use 1-63 lower-case letters"):
            SpiffeId.for_service(service, trust_domain="meshlet.local")
    for trust_domain in ("meshlet_local", "meshlet..local", "Meshlet.local", ""):
        with pytest.raises(InvalidSpiffeId, match=r"is not a DNS name: .* such as meshlet\.local"):
            SpiffeId.for_service("orders", trust_domain=trust_domain)
    with pytest.raises(InvalidSpiffeId, match="longer than a DNS name may be"):
        SpiffeId.for_service("a" * 63, namespace="b" * 63, datacenter="c" * 63, trust_domain="d" * 63)


# ------------------------------------------------------------------ agreement with the dev agent's Connect CA


@pytest.mark.parametrize("service", ["orders", "web-frontend", "Payments", "svc2"])
def test_a_connect_ca_leaf_names_its_service_as_this_module_expects(service: str) -> None:
    """The dev agent (an island) keeps its own copy of the name formats; a leaf it issues must carry the
    SPIFFE ID that parses to `service` and the DNS SAN a meshlet client will ask for."""
    ca = connect_ca.ConnectCA(
        RaftIndex(),
        trust_domain=CONSUL_TRUST_DOMAIN,
        datacenter="dc1",
        leaf_ttl_s=72 * 3600.0,
        now=lambda: 1_750_000_000.0,
        rng=random.Random(7),
    )
    leaf = x509.load_pem_x509_certificate(ca.leaf(service).cert_pem.encode())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    [uri] = names.get_values_for_type(x509.UniformResourceIdentifier)
    [dns_name] = names.get_values_for_type(x509.DNSName)

    identity = SpiffeId.parse(uri)
    assert identity == SpiffeId(CONSUL_TRUST_DOMAIN, "default", "dc1", service)
    assert dns_name == identity.dns_name == identity_dns_name(service, "default", "dc1", CONSUL_TRUST_DOMAIN)
    assert connect_ca.identity_dns_name(service, "default", "dc1", CONSUL_TRUST_DOMAIN) == identity.dns_name
