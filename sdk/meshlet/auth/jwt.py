"""Verify a bearer JWT: pick its issuer among the trusted ones by ``iss``, its key by ``kid`` from that issuer's
JWKS (meshlet.auth.jwks), then let PyJWT check the signature, ``exp``, ``nbf``, ``iat`` (within the issuer's
leeway), ``iss`` and ``aud``. Only the asymmetric algorithms an issuer allows are accepted, each only with a key of
its own family, so ``alg: none`` and an HMAC signed with a public key (the classic confusion) never verify.
Every refusal is a TokenRejected whose description can be shown to the caller (RFC 6750's error_description).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK

from meshlet.auth.jwks import IssuerKeys, file_fetch, https_fetch
from meshlet.config.schema import JwtIssuer

# The algorithms an issuer may allow, by the key type (JWK kty) that verifies them. No HS*: meshlet holds no secrets.
KEY_TYPES = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "RSA"),
    **dict.fromkeys(("ES256", "ES384", "ES512"), "EC"),
    "EdDSA": "OKP",
}
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
MAX_TOKEN_BYTES = 16 * 1024


class TokenRejected(Exception):
    """A token that does not prove who is calling; `description` says why, in words fit for the caller."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass(frozen=True)
class TrustedIssuer:
    issuer: str
    audiences: tuple[str, ...]
    algorithms: frozenset[str]
    leeway_s: float
    keys: IssuerKeys


class JwtVerifier:
    """The trusted issuers, each with its keys; `verify` answers a token's claims or raises TokenRejected."""

    def __init__(self, issuers: Iterable[TrustedIssuer]) -> None:
        self.issuers = {trusted.issuer: trusted for trusted in issuers}

    async def verify(self, token: str) -> dict[str, Any]:
        header, issuer = self._read(token)
        family = KEY_TYPES[header["alg"]]  # only a key of the algorithm's own type: never RSA bytes to HMAC
        keys = [key for key in await issuer.keys.keys_for(header.get("kid")) if key.key_type == family]
        if not keys:
            kid = header.get("kid")
            raise TokenRejected(
                f"no key of {issuer.issuer} has kid {_short(kid)}" if kid else f"{issuer.issuer} has no key"
            )
        return check_signed(token, keys, issuer)

    def _read(self, token: str) -> tuple[dict[str, Any], TrustedIssuer]:
        """The token's header and its trusted issuer, read before any signature is checked (to choose the key)."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        header, payload = read_unverified(token)
        iss = payload.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise TokenRejected(f"the issuer {_short(iss)} is not trusted" if iss else "the token has no iss claim")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            allowed = ", ".join(sorted(issuer.algorithms))
            raise TokenRejected(
                f"the algorithm {_short(alg)} is not accepted from {issuer.issuer} (allowed: {allowed})"
            )
        return header, issuer

    async def warm(self) -> None:
        """Fetch every issuer's keys now (a failure is logged, and retried when a token needs them)."""
        for issuer in self.issuers.values():
            await issuer.keys.refresh()

    async def close(self) -> None:
        for issuer in self.issuers.values():
            await issuer.keys.close()


def _short(value: Any) -> str:
    """A value the token chose, quoted for a refusal's description and cut short: the caller reads it back."""
    text = repr(value)
    return text if len(text) <= 66 else text[:64] + "..."


def read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and payload of a compact JWS, unverified: only to choose the issuer and key. Read here rather
    than by PyJWT, whose base64url check is pure Python and would be paid twice (PyJWT reads it again to verify)."""
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not three segments")
        header, payload = (json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in parts[:2])
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise ValueError("not JSON objects")
    except (ValueError, binascii.Error, RecursionError):  # JSONDecodeError is a ValueError; [[[[... recurses
        raise TokenRejected("the token is not a JWT (header.payload.signature, base64url JSON)") from None
    return header, payload


def check_signed(token: str, keys: Sequence[PyJWK], issuer: TrustedIssuer) -> dict[str, Any]:
    """The claims of `token` if one of `keys` verifies it and its times, issuer and audience hold. Pure."""
    for key in keys:
        algorithms = sorted(alg for alg in issuer.algorithms if KEY_TYPES[alg] == key.key_type)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=algorithms,
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                leeway=issuer.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidSignatureError:
            continue  # another key with this kid (or none named) may verify it
        except jwt.InvalidAlgorithmError:
            continue
        except jwt.InvalidTokenError as error:
            raise TokenRejected(_describe(error, issuer)) from None
        return claims
    raise TokenRejected("the signature does not verify")


def _describe(error: jwt.InvalidTokenError, issuer: TrustedIssuer) -> str:
    if isinstance(error, jwt.ExpiredSignatureError):
        return "the token expired"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "the token is not valid yet (nbf or iat in the future)"
    if isinstance(error, jwt.InvalidAudienceError):
        return f"the token is not meant for this audience (accepted: {', '.join(issuer.audiences)})"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"the token has no {error.claim} claim"
    return f"the token is invalid: {error}"


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes a token grants: ``scope`` (RFC 8693, space-separated) or ``scp`` (a list, as some issuers send)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(str(item) for item in value)
    return frozenset(found)


def missing_claims(claims: Mapping[str, Any], required: Mapping[str, str]) -> list[str]:
    """The names of `required` claims the token lacks or holds another value of (a list claim must contain it)."""
    missing = []
    for name, value in required.items():
        held = claims.get(name)
        holds = value in [str(v) for v in held] if isinstance(held, list) else held is not None and str(held) == value
        if not holds:
            missing.append(name)
    return missing


def trusted_issuer(config: JwtIssuer) -> TrustedIssuer:
    """A TrustedIssuer from its config; its keys are fetched when the first token arrives (or `warm`)."""
    if config.jwks_uri is not None:
        fetch, where = https_fetch(config.jwks_uri, config.ca_file), config.jwks_uri
    else:
        assert config.jwks_file is not None  # the schema requires one of the two
        fetch, where = file_fetch(config.jwks_file), str(config.jwks_file)
    keys = IssuerKeys(fetch, where, refresh_s=config.jwks_refresh, min_refetch_s=config.jwks_min_refetch)
    return TrustedIssuer(config.issuer, config.audiences, frozenset(config.algorithms), config.leeway, keys)


def verifier(issuers: Iterable[JwtIssuer]) -> JwtVerifier:
    return JwtVerifier(trusted_issuer(issuer) for issuer in issuers)
