"""What verifying an end user's bearer JWT costs per request (``edge.auth`` and ``inbound.jwt`` share the check,
meshlet.auth.jwt), with the issuer's keys cached, as they are for every request but the first after a rotation.

1. meshlet's verify (issuer by iss, key by kid, algorithm allow-list, signature, exp/nbf/iat, iss, aud) for RS256
   (2048-bit RSA) and ES256 (P-256) tokens, against PyJWT's bare decode with the key in hand: what meshlet adds.
   "signature" is the cryptography library's check alone, the floor under both.
2. A refused token (a tampered payload: the signature check is paid, then refused).
3. An API key lookup (SHA-256 of the key, a dict lookup), for scale.

Each is measured three times, taking turns, and the best kept (the machine is shared). Nothing is asserted.
Knob: BENCH_JWT_CALLS (default 5000).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt

from meshlet.auth.jwks import IssuerKeys
from meshlet.auth.jwt import JwtVerifier, TokenRejected, TrustedIssuer
from meshlet_edge.auth.api_keys import ApiKey, KeyTable, key_hash
from tests.support.jwt_issuer import TestIssuer

CALLS = int(os.environ.get("BENCH_JWT_CALLS", "5000"))


async def per_call_us(run: Callable[[], Awaitable[object]], calls: int = CALLS) -> float:
    for _ in range(min(200, calls)):
        await run()
    began = time.perf_counter()
    for _ in range(calls):
        await run()
    return (time.perf_counter() - began) / calls * 1e6


async def measure(issuer: TestIssuer) -> None:
    document = json.dumps(issuer.jwks()).encode()

    async def fetch() -> bytes:
        return document

    keys = IssuerKeys(fetch, "memory")
    trusted = TrustedIssuer(issuer.issuer, ("shop",), frozenset({"RS256", "ES256"}), 30.0, keys)
    verifier = JwtVerifier([trusted])
    await verifier.warm()
    print(f"JWT verification, keys cached ({CALLS} calls each; µs per call)")
    print(f"  {'':24}{'meshlet verify':>16}{'PyJWT decode':>16}{'signature':>12}{'verifies/s':>12}")
    for kid, alg in (("rsa-1", "RS256"), ("ec-1", "ES256")):
        token = issuer.token(kid, scope="orders.read")
        public = issuer.keys[kid][1].public_key()

        async def bare(token: str = token, public: object = public, alg: str = alg) -> object:
            return jwt.decode(token, public, algorithms=[alg], audience="shop", issuer=issuer.issuer)  # type: ignore[arg-type]

        async def ours(token: str = token) -> object:
            return await verifier.verify(token)

        algorithm = jwt.get_algorithm_by_name(alg)
        signing_input, _, signature = token.rpartition(".")
        raw = jwt.utils.base64url_decode(signature)

        async def signature_only(
            signing_input: str = signing_input, raw: bytes = raw, algorithm: Any = algorithm, public: Any = public
        ) -> object:
            return algorithm.verify(signing_input.encode(), public, raw)

        rounds = [[await per_call_us(run, CALLS // 3) for run in (ours, bare, signature_only)] for _ in range(3)]
        mine, theirs, crypto = (min(column) for column in zip(*rounds, strict=True))  # taking turns, best of 3
        print(f"  {alg:24}{mine:16.1f}{theirs:16.1f}{crypto:12.1f}{1e6 / mine:12.0f}")

    tampered = issuer.tampered("rsa-1")

    async def refused() -> object:
        try:
            return await verifier.verify(tampered)
        except TokenRejected:
            return None

    print(f"  {'RS256 tampered (401)':24}{await per_call_us(refused):16.1f}")
    table = KeyTable()
    table.replace({key_hash(f"key-{n}"): ApiKey(f"owner-{n}", None, frozenset()) for n in range(10000)})

    async def lookup() -> object:
        return table.lookup("key-4242")

    print(f"  {'API key lookup (10k keys)':24}{await per_call_us(lookup, CALLS * 10):16.2f}")
    await verifier.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        issuer = TestIssuer(Path(folder))
        issuer.add_key("rsa-1", "RS256")
        issuer.add_key("ec-1", "ES256")
        try:
            asyncio.run(measure(issuer))
        finally:
            issuer.close()


if __name__ == "__main__":
    main()
