"""``edge.auth``: who is calling. Per request the first rule of ``edge.auth.routes`` that names it says what proves
the caller (``none``, ``jwt``, ``api_key`` or ``any``) and which scopes and claims it must hold; the verified
caller is set in meshlet_edge.caller.current for the policies after auth (rate limits), and goes upstream as
``x-meshlet-subject`` plus the headers ``claims_to_headers`` maps, which are never taken from the client.

A refusal is 401 (no credential, or one that does not verify) or 403 (verified, but lacking a scope or claim),
with RFC 6750's ``WWW-Authenticate: Bearer`` challenge and the edge's Status JSON. An aiohttp middleware inside
the observer and compression (a refusal is traced, counted and compressed like any answer) and after CORS.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web

from meshlet.auth.jwt import JwtVerifier, TokenRejected, missing_claims, scopes_of, verifier
from meshlet.config.schema import EdgeConfig
from meshlet.discovery.consul_client import ConsulFactory
from meshlet_edge import caller
from meshlet_edge.auth.api_keys import ConsulKeys, KeyTable, read_file
from meshlet_edge.auth.rules import AuthRule, challenge, compile_rules, rule_for, uneven_methods
from meshlet_edge.caller import Caller
from meshlet_edge.forwarding import carried
from meshlet_edge.responses import error_answer
from meshlet_edge.stages import Handler
from meshlet_edge.status import refusal

if TYPE_CHECKING:
    from meshlet_edge.routes import Route

log = logging.getLogger("meshlet.edge.auth")

SUBJECT_HEADER = "x-meshlet-subject"
ANONYMOUS = Caller(subject="", kind="anonymous", plan=None, scopes=frozenset(), claims={})
_BEARER = re.compile(r"^Bearer +(\S+) *$", re.IGNORECASE)
MethodOf = Callable[[str, str], str]  # (verb, raw path) -> the gRPC method its route calls, or ""


class Unproven(Exception):
    """401: `error` is None when no credential came at all (RFC 6750 3.1)."""

    def __init__(self, description: str, error: str | None = "invalid_token") -> None:
        super().__init__(description)
        self.description = description
        self.error = error


class Authenticator:
    def __init__(self, edge: EdgeConfig, consul: ConsulFactory, method_of: MethodOf) -> None:
        auth = edge.auth
        self.rules = compile_rules(auth.routes)
        self.realm = auth.realm
        self.claim = edge.consumers.claim
        self.plan_claim = edge.consumers.plan_claim
        self.claims_to_headers = dict(auth.claims_to_headers)
        self.jwt: JwtVerifier | None = verifier(auth.issuers) if auth.issuers else None
        self._several_issuers = len(auth.issuers) > 1  # then a subject is named with its issuer (caller.Caller)
        keys = auth.api_keys
        self.keys = KeyTable() if keys is not None else None
        self.key_header = keys.header if keys is not None else ""
        self.key_query = keys.query if keys is not None else None
        self._file = keys.path if keys is not None and keys.source == "file" else None
        self._consul: ConsulKeys | None = None
        if self.keys is not None and keys is not None and keys.source == "consul":
            self._consul = ConsulKeys(self.keys, consul, keys.prefix)
        self._method_of = method_of

    @property
    def identity_headers(self) -> frozenset[str]:
        """The headers only the edge may set upstream: stripped from what a client sends."""
        return frozenset({SUBJECT_HEADER, *self.claims_to_headers.values()})

    async def start(self) -> None:
        if self.keys is not None and self._file is not None:
            self.keys.replace(read_file(self._file))
            log.info("API keys from %s: %d", self._file, len(self.keys))
        if self._consul is not None:
            await self._consul.start()
        if self.jwt is not None:
            await self.jwt.warm()

    def warn_uneven(self, routes: Iterable[Route]) -> None:
        """Log each method that one path reaches with a credential and another with a lesser one (or none)."""
        for sentence in uneven_methods(self.rules, routes):
            log.warning("edge.auth.routes: %s; if that is not meant, name the method (/pkg.Service/Method)", sentence)

    async def close(self) -> None:
        if self._consul is not None:
            await self._consul.close()
        if self.jwt is not None:
            await self.jwt.close()

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        rule = rule_for(self.rules, request.method, raw_path, self._method_of(request.method, raw_path))
        try:
            found = ANONYMOUS if rule is None or rule.auth == "none" else await self.identify(request, rule)
        except Unproven as unproven:
            status = refusal(grpc.StatusCode.UNAUTHENTICATED, unproven.description)
            header = challenge(self.realm, unproven.error, unproven.description if unproven.error else None)
            return error_answer(status, 401, {"WWW-Authenticate": header})
        except Exception:  # a bug of ours still answers in the one error shape, and lets nobody through
            log.exception("%s %s: auth failed inside the edge", request.method, request.path)
            return error_answer(refusal(grpc.StatusCode.INTERNAL, "the edge failed to check the credential"), 500, {})
        if rule is not None and (lacking := self._lacking(found, rule)) is not None:
            status = refusal(grpc.StatusCode.PERMISSION_DENIED, lacking)
            header = challenge(self.realm, "insufficient_scope", lacking, " ".join(sorted(rule.scopes)) or None)
            return error_answer(status, 403, {"WWW-Authenticate": header})
        caller.current.set(found)
        return await handler(request)

    async def identify(self, request: web.Request, rule: AuthRule) -> Caller:
        """The caller the request's credential proves, as `rule` accepts it; Unproven otherwise."""
        token = self._bearer(request) if rule.auth in ("jwt", "any") else None
        if token is not None:
            return await self._from_token(token)
        key = self._api_key(request) if rule.auth in ("api_key", "any") else None
        if key is not None:
            return self._from_key(key)
        wanted = {"jwt": "a bearer token", "api_key": f"an API key ({self.key_header})"}.get(
            rule.auth, f"a bearer token or an API key ({self.key_header})"
        )
        raise Unproven(f"{request.method} {request.path} needs {wanted}", error=None)

    def _bearer(self, request: web.Request) -> str | None:
        """The bearer token; None when the request has none (another scheme, such as Basic, is no bearer token)."""
        header = _only(request, "Authorization")
        if header is None or header[:7].lower() != "bearer ":
            return None
        matched = _BEARER.match(header)
        if matched is None:
            raise Unproven("the Authorization header must be: Bearer <token>")
        return matched.group(1)

    def _api_key(self, request: web.Request) -> str | None:
        key = _only(request, self.key_header)
        if self.key_query is not None and self.key_query in request.rel_url.query:
            keys = request.rel_url.query.getall(self.key_query)
            if key is not None or len(keys) > 1:
                raise Unproven(f"send one API key, in {self.key_header} or in ?{self.key_query}=, not both or two")
            key = keys[0]
        return key.strip() if key else None

    async def _from_token(self, token: str) -> Caller:
        assert self.jwt is not None
        try:
            claims = await self.jwt.verify(token)
        except TokenRejected as rejected:
            raise Unproven(rejected.description) from None
        subject = claims.get(self.claim)
        if not isinstance(subject, str | int) or isinstance(subject, bool) or subject == "":
            raise Unproven(f"the token has no {self.claim} claim to name its consumer")
        if not carried(str(subject)):  # x-meshlet-subject could not carry it: never a call without one
            raise Unproven(f"the token's {self.claim} claim holds characters metadata cannot carry (printable ASCII)")
        plan = claims.get(self.plan_claim) if self.plan_claim else None
        issuer = str(claims["iss"]) if self._several_issuers else ""
        plan_name = str(plan) if plan is not None else None
        return Caller(str(subject), "jwt", plan_name, scopes_of(claims), claims, issuer)

    def _from_key(self, key: str) -> Caller:
        assert self.keys is not None
        found = self.keys.lookup(key)
        if found is None:
            raise Unproven("the API key is not known (or was revoked)")
        return Caller(found.owner, "api_key", found.plan, found.scopes, {})

    def _lacking(self, found: Caller, rule: AuthRule) -> str | None:
        """What the verified caller lacks of the rule's scopes and claims, in words; None when it holds them."""
        missing = sorted(rule.scopes - found.scopes)
        if missing:
            return f"the caller lacks the scope {', '.join(missing)}"
        claims = missing_claims(found.claims, rule.claims)
        if claims:
            return f"the caller's token lacks the claim {', '.join(f'{c}={rule.claims[c]}' for c in claims)}"
        return None

    def identity_metadata(self, found: Caller | None) -> tuple[tuple[str, str], ...]:
        """What goes upstream about the verified caller: its subject and the mapped claims (printable ASCII only)."""
        if found is None or found.kind == "anonymous":
            return ()
        metadata = [(SUBJECT_HEADER, found.subject)]
        metadata += [
            (header, _text(found.claims[claim]))
            for claim, header in self.claims_to_headers.items()
            if claim in found.claims
        ]
        return tuple((key, value) for key, value in metadata if carried(value))


def _only(request: web.Request, header: str) -> str | None:
    """The header's one value: a credential sent twice is refused, never one of them picked, since a proxy or an
    upstream that is forwarded the header may read the other (RFC 9110 5.3: neither header is a list)."""
    values = request.headers.getall(header, ())
    if len(values) > 1:
        raise Unproven(f"send one {header} header, not {len(values)}")
    return values[0] if values else None


def _text(value: Any) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)
