"""How a caller's certificate is judged (meshlet.security.peers): exactly one URI SAN naming a service, a trust
domain we trust, a chain that honours every path length constraint."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography import x509

from meshlet.security.identity import SpiffeId
from meshlet.security.peers import RefusedPeer, judge_certificate
from tests.support.crafted_certs import Issuer, intermediate, leaf, root_ca

DOMAIN = "meshlet.test"
GATEWAY = f"spiffe://{DOMAIN}/ns/default/dc/dc1/svc/gateway"
ROOT = root_ca("root", DOMAIN, path_length=0)
OPEN_ROOT = root_ca("open root", DOMAIN, path_length=None)
OURS = frozenset({DOMAIN})


def judged(issuer: Issuer, intermediates: Sequence[x509.Certificate] | None = (), **names: object) -> SpiffeId:
    cert, _ = leaf(issuer, **names)  # type: ignore[arg-type]
    roots = [ROOT.cert, OPEN_ROOT.cert]
    return judge_certificate(x509.load_pem_x509_certificate(cert), intermediates, roots, OURS)


def test_the_caller_is_the_one_uri_san_beside_its_dns_san() -> None:
    assert judged(ROOT, uris=(GATEWAY,), dns=("gateway.svc.default.ns.dc1.dc.meshlet.test",)).uri == GATEWAY


@pytest.mark.parametrize(
    ("names", "why"),
    [
        ({"common_name": GATEWAY}, "no URI SAN (a SPIFFE ID in the common name"),
        ({"dns": (GATEWAY,)}, "no URI SAN (a SPIFFE ID in a DNS SAN"),
        ({"emails": (GATEWAY,)}, "no URI SAN (a SPIFFE ID in an e-mail SAN"),
        ({"uris": (GATEWAY, GATEWAY.replace("gateway", "web"))}, "has 2 URI SANs"),
        ({"uris": (GATEWAY, "https://example.com")}, "has 2 URI SANs"),
        ({"uris": (f"spiffe://{DOMAIN}/agent/client/dc/dc1/id/x",)}, "does not name a service"),
    ],
)
def test_a_certificate_without_exactly_one_service_uri_san_names_nobody(names: dict[str, Any], why: str) -> None:
    with pytest.raises(RefusedPeer, match=re.escape(why)):
        judged(ROOT, **names)


def test_another_trust_domain_is_refused_unless_federated() -> None:
    foreign = GATEWAY.replace(DOMAIN, "other.example")
    cert = x509.load_pem_x509_certificate(leaf(ROOT, uris=(foreign,))[0])
    with pytest.raises(RefusedPeer, match=r"tls\.trusted_domains"):
        judge_certificate(cert, (), [ROOT.cert], OURS)
    assert judge_certificate(cert, (), [ROOT.cert], OURS | {"other.example"}).trust_domain == "other.example"


def test_an_intermediate_counts_against_the_roots_path_length_constraint() -> None:
    under_closed, under_open = intermediate(ROOT), intermediate(OPEN_ROOT)
    with pytest.raises(RefusedPeer, match="pathLenConstraint allows 0"):
        judged(under_closed, [under_closed.cert], uris=(GATEWAY,))
    assert judged(under_open, [under_open.cert], uris=(GATEWAY,)).service == "gateway"
    # Where the handshake applied the constraints itself (OpenSSL, L4), the chain is not looked at again.
    assert judged(under_closed, None, uris=(GATEWAY,)).service == "gateway"


def test_a_leaf_that_does_not_reach_the_bundle_through_what_it_presented_is_refused() -> None:
    middle = intermediate(OPEN_ROOT)
    with pytest.raises(RefusedPeer, match="does not reach a CA of the trust bundle"):
        judged(middle, [], uris=(GATEWAY,))


def test_a_ca_certificate_names_no_caller_even_with_a_service_uri() -> None:
    posing = root_ca("a CA posing as gateway", DOMAIN, uri=GATEWAY)
    with pytest.raises(RefusedPeer, match="a CA's, not a service's"):
        judge_certificate(posing.cert, None, [posing.cert], OURS)
