"""meshlet.auth.jwt: what a token must be to verify, judged against keys generated here (RSA and EC)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshlet.auth.jwks import IssuerKeys
from meshlet.auth.jwt import JwtVerifier, TokenRejected, TrustedIssuer, missing_claims, scopes_of
from tests.support.jwt_issuer import TestIssuer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[TestIssuer]:
    found = TestIssuer(tmp_path)
    found.add_key("rsa-1", "RS256")
    found.add_key("ec-1", "ES256")
    found.add_key("ed-1", "EdDSA")
    yield found
    found.close()


def verifier_of(issuer: TestIssuer, clock: Clock | None = None, algorithms=("RS256", "ES256", "EdDSA")) -> JwtVerifier:
    fetched = []

    async def fetch() -> bytes:
        fetched.append(1)
        return json.dumps(issuer.jwks()).encode()

    keys = IssuerKeys(fetch, "memory", refresh_s=300, min_refetch_s=10, clock=clock or Clock())
    trusted = TrustedIssuer(issuer.issuer, ("shop",), frozenset(algorithms), 30.0, keys)
    return JwtVerifier([trusted])


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed-1"])
async def test_a_genuine_token_verifies_and_answers_its_claims(issuer: TestIssuer, kid: str) -> None:
    claims = await verifier_of(issuer).verify(issuer.token(kid, scope="orders.read orders.write"))
    assert claims["sub"] == "user-1"
    assert scopes_of(claims) == {"orders.read", "orders.write"}


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda i: i.token("rsa-1", exp=1), "expired"),
        (lambda i: i.token("rsa-1", nbf=2**31), "not valid yet"),
        (lambda i: i.token("rsa-1", iat=2**31), "not valid yet"),
        (lambda i: i.token("rsa-1", aud="billing"), "audience"),
        (lambda i: i.token("rsa-1", iss="https://evil.test"), "not trusted"),
        (lambda i: i.token("rsa-1", exp=None), "no exp claim"),
        (lambda i: i.unsigned_token("rsa-1"), "'none' is not accepted"),
        (lambda i: i.hmac_with_public_key("rsa-1"), "'HS256' is not accepted"),
        (lambda i: i.tampered("rsa-1"), "signature does not verify"),
        (lambda i: "not.a.jwt", "not a JWT"),
    ],
    ids=[
        "expired",
        "nbf-future",
        "iat-future",
        "wrong-aud",
        "wrong-iss",
        "no-exp",
        "alg-none",
        "hmac-rsa",
        "tampered",
        "garbage",
    ],
)
async def test_a_token_that_proves_nothing_is_rejected_saying_why(issuer: TestIssuer, make, why: str) -> None:
    with pytest.raises(TokenRejected, match=why):
        await verifier_of(issuer).verify(make(issuer))


async def test_an_hmac_token_is_rejected_even_if_the_issuer_allowed_hs256_by_mistake(issuer: TestIssuer) -> None:
    """No HS* algorithm maps to a key type: a public RSA key is never handed to HMAC."""
    verifier = verifier_of(issuer, algorithms=("RS256",))
    with pytest.raises(TokenRejected):
        await verifier.verify(issuer.hmac_with_public_key("rsa-1"))


async def test_the_leeway_accepts_a_token_just_expired(issuer: TestIssuer) -> None:
    import time

    claims = await verifier_of(issuer).verify(issuer.token("ec-1", exp=int(time.time()) - 5))
    assert claims["sub"] == "user-1"


async def test_an_ec_key_cannot_verify_an_rs256_token_claiming_its_kid(issuer: TestIssuer) -> None:
    token = issuer.token("rsa-1")
    _, payload, signature = token.split(".")
    import base64

    forged_header = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "kid": "ec-1"}).encode()).rstrip(b"=")
    with pytest.raises(TokenRejected, match="no key"):
        await verifier_of(issuer).verify(f"{forged_header.decode()}.{payload}.{signature}")


async def test_a_new_kid_refetches_the_keys_at_most_once_per_interval(issuer: TestIssuer) -> None:
    clock = Clock()
    verifier = verifier_of(issuer, clock)
    assert (await verifier.verify(issuer.token("rsa-1")))["sub"] == "user-1"
    issuer.add_key("rsa-2", "RS256")  # rotated in at the issuer
    clock.now += 1  # too soon after the first fetch: the unknown kid does not refetch yet
    with pytest.raises(TokenRejected, match=r"no key of .* has kid .rsa-2."):
        await verifier.verify(issuer.token("rsa-2"))
    clock.now += 10
    assert (await verifier.verify(issuer.token("rsa-2")))["sub"] == "user-1"


async def test_stale_keys_are_refreshed_behind_the_request_that_finds_them_stale(issuer: TestIssuer) -> None:
    clock = Clock()
    verifier = verifier_of(issuer, clock)
    await verifier.verify(issuer.token("rsa-1"))
    issuer.published.remove("rsa-1")  # retired at the issuer
    clock.now += 301
    await verifier.verify(issuer.token("rsa-1"))  # served from the keys held; the refresh runs behind it
    await verifier.issuers[issuer.issuer].keys.refresh()
    with pytest.raises(TokenRejected, match="no key"):
        await verifier.verify(issuer.token("rsa-1"))


async def test_the_keys_come_over_https_trusting_the_configured_ca(issuer: TestIssuer) -> None:
    from meshlet.auth.jwks import JwksUnavailable, https_fetch, parse_jwks

    keys = parse_jwks(await https_fetch(issuer.uri, issuer.ca_path)(), issuer.uri)
    assert {key.key_id for key in keys} == {"rsa-1", "ec-1", "ed-1"}
    with pytest.raises(JwksUnavailable, match="cannot fetch"):
        await https_fetch(issuer.uri)()  # the system's CAs alone do not trust the test CA


def test_a_symmetric_key_in_a_jwks_is_never_loaded() -> None:
    from meshlet.auth.jwks import parse_jwks

    document = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "shared"}]}
    assert parse_jwks(json.dumps(document).encode(), "memory") == ()


def test_claims_required_by_a_rule_match_values_or_list_members() -> None:
    claims = {"tenant": "acme", "groups": ["admins", "staff"], "level": 3}
    assert missing_claims(claims, {"tenant": "acme", "groups": "staff", "level": "3"}) == []
    assert missing_claims(claims, {"tenant": "other", "groups": "root", "absent": "x"}) == [
        "tenant",
        "groups",
        "absent",
    ]
    assert scopes_of({"scp": ["a", "b"], "scope": "c"}) == {"a", "b", "c"}


async def test_an_unreachable_issuer_is_asked_again_only_after_the_interval(issuer: TestIssuer) -> None:
    from meshlet.auth.jwks import JwksUnavailable

    clock, asked = Clock(), []

    async def down() -> bytes:
        asked.append(1)
        raise JwksUnavailable("down")

    keys = IssuerKeys(down, "down", min_refetch_s=10, clock=clock)
    verifier = JwtVerifier([TrustedIssuer(issuer.issuer, ("shop",), frozenset({"RS256"}), 30.0, keys)])
    for _ in range(5):
        with pytest.raises(TokenRejected, match=r"has no key|no key of"):
            await verifier.verify(issuer.token("rsa-1"))
    assert len(asked) == 1  # a flood of tokens is not a flood of fetches
    clock.now += 10
    with pytest.raises(TokenRejected):
        await verifier.verify(issuer.token("rsa-1"))
    assert len(asked) == 2


async def test_a_header_of_the_wrong_shapes_is_rejected_not_a_crash(issuer: TestIssuer) -> None:
    import base64

    _, payload, signature = issuer.token("rsa-1").split(".")
    for header in ({"alg": ["RS256"]}, {"alg": "RS256", "kid": {"a": 1}}, {"alg": None}):
        forged = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        with pytest.raises(TokenRejected):
            await verifier_of(issuer).verify(f"{forged}.{payload}.{signature}")
    with pytest.raises(TokenRejected, match=r"\.\.\. is not trusted"):
        await verifier_of(issuer).verify(issuer.token("rsa-1", iss="x" * 5000))
