"""meshlet-edge's policies attacked the way a hostile client or a careless operator would: non-canonical paths
against an auth rule, a credential sent twice, one subject from two issuers, claims that metadata cannot carry,
forged identity headers, a forwarded header left out of a cache rule's key. Every part real and on loopback: a dev
agent, the SDK echo server (``metadata?<tag>`` answers the metadata the upstream received), two token issuers
whose keys the test makes (JWKS files), an API keys file, one meshlet-edge; raw sockets where aiohttp's client
would normalise the request. Routes (tests/support/edge_echo.py):

    GET /v1/fresh/{m}    a token (jwt); not cached
    GET /v1/private/{m}  a token or an API key; cached per caller
    GET /v1/echo/{m}     a token or an API key; cached for everyone (public)

The edge forwards ``Accept-Language`` and maps the claim ``tenant`` to ``x-tenant``. GETs cost nothing; an anonymous
``POST .../Echo/Stats`` is charged to its client (loopback is a trusted proxy: the client is X-Forwarded-For's) on a
bucket of one that never refills during a test."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
import pytest_asyncio

from tests.support.agents import start_dev_agent
from tests.support.edge_echo import EchoServer, EdgeProcess, start_echo, start_edge
from tests.support.jwt_issuer import TestIssuer
from tests.support.processes import Processes, processes

WAIT_S = 20.0  # bounds a request, never a timing assertion
KEYS = {"key-a": {"owner": "alice"}}
STATS = "/meshlet_api.echo.v1.Echo/Stats"
JSON_BODY = [("Content-Type", "application/json"), ("Content-Length", "2")]


@dataclass
class World:
    edge: EdgeProcess
    echo: EchoServer
    ours: TestIssuer
    partner: TestIssuer


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


@pytest.fixture(scope="module")
def world(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("edge-hostile-policies")
    agent = start_dev_agent(module_procs)
    echo = start_echo(module_procs, agent, folder)
    ours = TestIssuer(tmp_path_factory.mktemp("ours"), issuer="https://id.shop.test")
    partner = TestIssuer(tmp_path_factory.mktemp("partner"), issuer="https://id.partner.test")
    issuers = []
    for name, issuer in (("ours", ours), ("partner", partner)):
        issuer.add_key(f"{name}-1", "ES256")
        jwks = folder / f"{name}.json"
        jwks.write_text(json.dumps(issuer.jwks()))
        trusted = {"issuer": issuer.issuer, "audiences": ["shop"], "jwks_file": str(jwks)}
        issuers.append({**trusted, "algorithms": ["ES256"]})
    keys = folder / "keys.yaml"
    keys.write_text(json.dumps({hashlib.sha256(key.encode()).hexdigest(): entry for key, entry in KEYS.items()}))
    section: dict[str, Any] = {
        "forward_headers": ["accept-language"],
        "auth": {
            "issuers": issuers,
            "api_keys": {"source": "file", "path": str(keys), "query": "api_key"},
            "claims_to_headers": {"tenant": "x-tenant"},
            "routes": [
                {"match": "GET /v1/fresh/*", "auth": "jwt"},
                {"match": "GET /v1/private/*", "auth": "any"},
                {"match": "GET /v1/echo/*", "auth": "any"},
            ],
        },
        "plans": {"default": {"rate_per_s": 0.001, "burst": 1}},  # nothing refills during a test
        "limits": {
            "trusted_proxies": ["127.0.0.0/8"],
            "routes": [{"match": "GET /**", "cost": 0}],
            # these attacks fail auth hundreds of times from one address on purpose, to see each answer; the
            # guard that refuses such an address is tested in tests/integration/test_edge_policies.py
            "failed_credentials": None,
        },
        "cache": {
            "store": "memory",
            "routes": [
                {"match": "GET /v1/private/*", "ttl": "30s"},
                {"match": "GET /v1/echo/*", "ttl": "30s", "public": True},
            ],
        },
    }
    edge = start_edge(module_procs, folder, agent, section, name="edge-hostile-policies")
    yield World(edge, echo, ours, partner)
    ours.close()
    partner.close()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str:
        return ", ".join(self.headers.get(name.lower(), []))

    def upstream_saw(self) -> dict[str, str]:
        """The metadata the echo server received, from a ``metadata?`` answer."""
        return dict(json.loads(json.loads(self.body)["message"]))


async def raw(
    at: World | EdgeProcess, method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
) -> Answer:
    """One HTTP/1.1 request written byte for byte (the target and headers exactly as given, repeats kept)."""
    edge = at.edge if isinstance(at, World) else at
    port = int(edge.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found: dict[str, list[str]] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    return Answer(int(status_line.split()[1]), found, body)


def bearer(issuer: TestIssuer, sub: str, **claims: Any) -> tuple[str, str]:
    kid = next(iter(issuer.keys))
    return "Authorization", f"Bearer {issuer.token(kid, sub=sub, **claims)}"


def reached(world: World) -> str:
    """Every call the echo server ran, as its log has them (a tag in it reached the upstream)."""
    return world.echo.log.read_text() if world.echo.log.exists() else ""


def fresh(prefix: str = "m") -> str:
    return prefix + uuid.uuid4().hex[:12]


# ------------------------------------------------------------------------------------------ paths against rules

NOT_THE_ROUTE = ["//v1/fresh/{m}", "/V1/fresh/{m}", "/v1//fresh/{m}", "/v1/fresh/{m}/", "/v1/fresh", "/v1/fresh/"]
NOT_THE_ROUTE += ["/v1/fresh/{m}/..", "/v1/fresh%2F{m}", "/v1%2Ffresh/{m}", "/v1/fresh/{m}/extra", "/v1/fresh/{m}:verb"]
THE_ROUTE = ["/v1/fresh/{m}", "/v1/fr%65sh/{m}", "/v1/fresh/{m};p=1", "/v1/fresh/{m}?x=1", "/v1/fresh/{m}%2F..%2Fx"]
THE_ROUTE += ["/v1/./fresh/{m}", "/v1/echo/../fresh/{m}", "/v1/fresh/{m}#frag"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("target", NOT_THE_ROUTE + THE_ROUTE)
async def test_no_spelling_of_a_path_reaches_the_route_without_its_credential(world: World, target, method) -> None:
    """The auth rule and the route table judge one parse of the path: a spelling that reaches the jwt route is
    refused 401 without a token, any other reaches no route at all (404 or 405), never the upstream."""
    tag = fresh()
    answer = await raw(world, method, target.format(m=f"metadata%3F{tag}"))
    assert answer.status in (401, 404, 405), (target, answer.status, answer.body[:200])
    assert tag not in reached(world), f"{method} {target} reached the upstream without a credential"


async def test_the_edge_says_at_start_which_method_one_path_guards_and_another_leaves_weaker(world: World) -> None:
    """Echo is one method behind /v1/fresh (a token) and /v1/echo (a token or a key): a careless rule by path."""
    said = world.edge.child.output()
    assert "/meshlet_api.echo.v1.Echo/Echo is reachable as" in said
    assert "GET /v1/fresh/{message} (auth jwt)" in said
    assert "GET /v1/echo/{message} (auth any)" in said


# ------------------------------------------------------------------------------------------ tokens that lie


def forged(world: World, signer: TestIssuer, headers: dict[str, Any], **claims: Any) -> str:
    """A token signed by `signer`'s key, with header fields and claims of the attacker's choosing."""
    alg, key = next(iter(signer.keys.values()))
    return jwt.encode(world.ours.claims(sub="alice", **claims), key, algorithm=alg, headers=headers)


async def test_tokens_that_lie_about_their_key_or_issuer_are_refused(world: World) -> None:
    """Each is refused 401: the key is chosen only among the keys of the issuer the token names, from that
    issuer's configured JWKS; ``jku``/``x5u`` are never fetched, ``crit`` extensions never ignored."""
    ours_kid, partner_kid = next(iter(world.ours.keys)), next(iter(world.partner.keys))
    lies = {
        "another issuer's kid": forged(world, world.partner, {"kid": partner_kid}),
        "our kid, the partner's key": forged(world, world.partner, {"kid": ours_kid}),
        "a jku of the attacker's": forged(world, world.partner, {"kid": ours_kid, "jku": "https://127.0.0.1:1/k"}),
        "an x5u of the attacker's": forged(world, world.partner, {"x5u": "https://127.0.0.1:1/c.pem"}),
        "an unknown crit": forged(world, world.ours, {"kid": ours_kid, "crit": ["acme-bound"], "acme-bound": 1}),
        "no kid, the partner's key": forged(world, world.partner, {}),
        "aud of another": forged(world, world.ours, {"kid": ours_kid}, aud="billing"),
    }
    for lie, token in lies.items():
        for scheme in ("Bearer", "bearer", "BEARER"):
            answer = await raw(world, "GET", f"/v1/fresh/{fresh()}", [("Authorization", f"{scheme} {token}")])
            assert answer.status == 401, (lie, scheme, answer.body)
    good = forged(world, world.ours, {"kid": ours_kid})
    for spelled in (f"Bearer {good}", f"bearer  {good}", f"BEARER {good} "):
        assert (await raw(world, "GET", f"/v1/fresh/{fresh()}", [("Authorization", spelled)])).status == 200
    for broken in (f"Bearer {good} extra", f"Bearer\t{good}", f"Token {good}", f"Basic {good}"):
        assert (await raw(world, "GET", f"/v1/fresh/{fresh()}", [("Authorization", broken)])).status == 401


async def test_a_token_in_the_query_or_past_the_size_limit_proves_nothing(world: World) -> None:
    """A token is read from Authorization only (a URL ends up in logs and Referer headers); a huge one is refused
    before any parsing, in the one error shape, never a 500."""
    name, value = bearer(world.ours, "alice")
    token = value.removeprefix("Bearer ")
    for parameter in ("access_token", "token", "jwt"):
        assert (await raw(world, "GET", f"/v1/fresh/{fresh()}?{parameter}={token}")).status == 401
    over = await raw(world, "GET", f"/v1/fresh/{fresh()}", [(name, "Bearer " + "a" * 20000)])
    assert over.status == 400  # past the header limit: refused by the HTTP parser, in the edge's error shape
    assert json.loads(over.body)["code"] == 3


# ------------------------------------------------------------------------------------------ credentials twice


async def test_two_authorization_headers_are_refused_not_one_picked(world: World) -> None:
    """Two tokens: the edge would check the first while an upstream (or a proxy) forwarded both may read the other."""
    tag = fresh()
    alice, mallory = bearer(world.ours, "alice"), bearer(world.ours, "mallory")
    answer = await raw(world, "GET", f"/v1/fresh/metadata%3F{tag}", [alice, mallory])
    assert answer.status == 401
    assert 'error="invalid_token"' in answer.header("WWW-Authenticate")
    assert b"one Authorization header" in answer.body
    assert tag not in reached(world)


async def test_an_api_key_in_the_header_and_the_query_is_refused(world: World) -> None:
    tag = fresh()
    """The first key is a valid one each time: the edge must not admit alice while another key rides along."""
    both = await raw(world, "GET", f"/v1/private/metadata%3F{tag}?api_key=key-zzz", [("X-Api-Key", "key-a")])
    twice = await raw(world, "GET", f"/v1/private/metadata%3F{tag}?api_key=key-a&api_key=key-zzz")
    two_headers = await raw(world, "GET", f"/v1/private/metadata%3F{tag}", [("X-Api-Key", "key-a"), ("X-Api-Key", "x")])
    assert [both.status, twice.status, two_headers.status] == [401, 401, 401]
    assert tag not in reached(world)
    alone = await raw(world, "GET", f"/v1/private/metadata%3F{tag}?api_key=key-a")
    assert alone.status == 200
    assert alone.upstream_saw()["x-meshlet-subject"] == "alice"
    assert "api_key" not in alone.upstream_saw().values()  # the key is no field, nor forwarded


# ------------------------------------------------------------------------------------------ who the caller is


async def test_one_subject_from_two_issuers_is_two_callers_in_the_private_cache(world: World) -> None:
    """``sub`` is unique only within its issuer: the partner's alice must never get our alice's private entry."""
    target = f"/v1/private/metadata%3F{fresh()}"
    ours = await raw(world, "GET", target, [bearer(world.ours, "alice", tenant="shop")])
    again = await raw(world, "GET", target, [bearer(world.ours, "alice", tenant="shop")])
    partners = await raw(world, "GET", target, [bearer(world.partner, "alice", tenant="partner")])
    assert ours.status == again.status == partners.status == 200
    assert "hit" in again.header("Cache-Status").split("; ")  # the same caller: its own entry
    assert "fwd=miss" in partners.header("Cache-Status"), "the partner's alice was served our alice's entry"
    assert partners.upstream_saw()["x-tenant"] == "partner"


async def test_one_subjects_tokens_for_two_tenants_are_two_callers_in_the_private_cache(world: World) -> None:
    """The mapped claim x-tenant reaches the upstream, which answers per tenant: alice's entry for one tenant must
    not answer her token for another."""
    target = f"/v1/private/metadata%3F{fresh()}"
    first = await raw(world, "GET", target, [bearer(world.ours, "alice", tenant="north")])
    second = await raw(world, "GET", target, [bearer(world.ours, "alice", tenant="south")])
    assert first.status == second.status == 200
    assert second.upstream_saw()["x-tenant"] == "south", "served the answer made for alice's other tenant"
    again = await raw(world, "GET", target, [bearer(world.ours, "alice", tenant="south")])
    assert "hit" in again.header("Cache-Status").split("; ")


async def test_a_subject_that_metadata_cannot_carry_is_refused_not_sent_without_one(world: World) -> None:
    """Dropping x-meshlet-subject would make an authenticated call look like one without a caller upstream."""
    for sub in ("alice\r\nx-meshlet-subject: root", "élodie", "tab\there"):
        tag = fresh()
        answer = await raw(world, "GET", f"/v1/fresh/metadata%3F{tag}", [bearer(world.ours, sub)])
        assert answer.status == 401, (sub, answer.body)
        assert tag not in reached(world)


async def test_forged_identity_headers_never_reach_the_upstream_in_any_spelling(world: World) -> None:
    forged = [("X-Meshlet-Subject", "root"), ("x-meshlet-subject", "root"), ("X-MESHLET-SUBJECT", "root")]
    forged += [("x-tenant", "acme"), ("X-Tenant", "acme"), ("X-Meshlet-Subject", "root, admin")]
    signed = bearer(world.ours, "alice", tenant="a\r\nx-meshlet-subject: root")  # a claim no header can carry
    answer = await raw(world, "GET", f"/v1/fresh/metadata%3F{fresh()}", [signed, *forged])
    assert answer.status == 200
    seen = answer.upstream_saw()
    assert seen["x-meshlet-subject"] == "alice"
    assert "x-tenant" not in seen  # the claim is dropped, and the client's never forwarded
    anonymous = await raw(world, "GET", f"/v1/private/metadata%3F{fresh()}", forged)
    assert anonymous.status == 401


# ------------------------------------------------------------------------------------------ the cache's key


async def test_a_forwarded_header_is_part_of_a_public_entrys_key(world: World) -> None:
    """``Accept-Language`` reaches the upstream: an answer made for one value must not be served for another."""
    target = f"/v1/echo/metadata%3F{fresh()}"
    key = ("X-Api-Key", "key-a")
    poisoned = await raw(world, "GET", target, [key, ("Accept-Language", "xx-evil")])
    victim = await raw(world, "GET", target, [key, ("Accept-Language", "en")])
    assert poisoned.status == victim.status == 200
    assert poisoned.upstream_saw()["accept-language"] == "xx-evil"
    assert victim.upstream_saw()["accept-language"] == "en", "served the answer another client's header made"
    assert "accept-language" in victim.header("Vary").lower()
    same = await raw(world, "GET", target, [key, ("Accept-Language", "en")])
    assert "hit" in same.header("Cache-Status").split("; ")


async def test_unkeyed_headers_cannot_poison_a_public_entry(world: World) -> None:
    """Headers the upstream never sees change nothing stored: the entry is the upstream's JSON, uncompressed, and
    the compression, host and CORS of each answer are the asking request's own."""
    target = f"/v1/echo/metadata%3F{fresh()}"
    key = ("X-Api-Key", "key-a")
    poison = [("Accept-Encoding", "gzip"), ("X-Forwarded-Host", "evil.test"), ("Accept", "text/event-stream")]
    poison += [("Origin", "https://evil.test"), ("X-Original-URL", "/admin"), ("Forwarded", "host=evil.test")]
    first = await raw(world, "GET", target, [key, *poison])
    victim = await raw(world, "GET", target, [key])
    assert first.status == victim.status == 200
    assert "hit" in victim.header("Cache-Status").split("; ")
    assert victim.header("Content-Encoding") == ""
    assert b"evil" not in victim.body
    assert b"/admin" not in victim.body
    assert "x-forwarded-host" not in victim.upstream_saw()


async def test_a_private_entry_is_not_served_through_head_or_another_spelling_to_another_caller(world: World) -> None:
    m = f"metadata%3F{fresh()}"
    alice = await raw(world, "GET", f"/v1/private/{m}", [("X-Api-Key", "key-a")])
    assert alice.status == 200
    token = bearer(world.ours, "alice", tenant="tokens")  # a token's alice: another caller than the key's
    head = await raw(world, "HEAD", f"/v1/private/{m}", [token])
    spelled = await raw(world, "GET", f"/v1/priv%61te/{m}", [token])
    assert "fwd=miss" in head.header("Cache-Status")
    assert "fwd=miss" in spelled.header("Cache-Status")
    own = await raw(world, "GET", f"/v1/private/{m}", [token])  # the entry its HEAD stored, body and all
    assert "hit" in own.header("Cache-Status").split("; ")
    assert own.upstream_saw()["x-tenant"] == "tokens"


# ------------------------------------------------------------------------------------------ whose limit


async def stats(world: World, forwarded_for: str) -> int:
    answer = await raw(world, "POST", STATS, [("X-Forwarded-For", forwarded_for), *JSON_BODY], b"{}")
    return answer.status


async def test_an_ipv6_client_cannot_rotate_its_addresses_into_fresh_buckets(world: World) -> None:
    """Every address of one /64 belongs to one host or subscriber (RFC 6177): one bucket for them all."""
    assert await stats(world, "2001:db8:77:1::1") == 200
    assert await stats(world, "2001:db8:77:1:ffff:1:2:3") == 429  # another address of the same /64
    assert await stats(world, "2001:db8:77:2::1") == 200  # the next /64: another client
    assert await stats(world, "2001:db8:77:3::1, 198.51.100.77") == 200  # the left entry is the client's own word
    assert await stats(world, "2001:db8:77:4::1, 198.51.100.77") == 429


# ------------------------------------------------------------------------------------------ an issuer gone silent


@pytest.fixture(scope="module")
def silent(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeProcess, Any]]:
    """An edge whose only issuer's JWKS address takes the connection and never says a word (not even TLS's), and
    that issuer's token minter (its own JWKS server unused)."""
    folder = tmp_path_factory.mktemp("edge-silent-issuer")
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # the kernel completes handshakes into the backlog; nobody ever accepts
    minter = TestIssuer(tmp_path_factory.mktemp("silent-minter"), issuer="https://silent.test")
    minter.add_key("k1", "ES256")
    agent = start_dev_agent(module_procs)
    start_echo(module_procs, agent, folder)
    jwks_uri = f"https://127.0.0.1:{hole.getsockname()[1]}/jwks.json"
    issuer = {"issuer": minter.issuer, "audiences": ["shop"], "jwks_uri": jwks_uri, "jwks_min_refetch": "0s"}
    section = {"auth": {"issuers": [issuer], "routes": [{"match": "* /**", "auth": "jwt"}]}}  # 0s: ask each time
    try:
        yield start_edge(module_procs, folder, agent, section, name="edge-silent-issuer"), minter
    finally:
        minter.close()
        hole.close()


async def test_an_issuer_whose_keys_never_come_fails_closed_and_answers(silent) -> None:
    """Fail closed, never hang: a request waits at most the fetch's own timeout, concurrent ones share one fetch,
    and every one is a 401 saying the issuer has no such key."""
    edge, minter = silent
    token = bearer(minter, "alice")
    answers = await asyncio.gather(*(raw(edge, "GET", f"/v1/fresh/{fresh()}", [token]) for _ in range(10)))
    assert [answer.status for answer in answers] == [401] * 10
    assert all('error="invalid_token"' in answer.header("WWW-Authenticate") for answer in answers)
    assert b"no key of https://silent.test" in answers[0].body


async def test_a_kept_alive_connection_carries_no_caller_from_one_request_to_the_next(world: World) -> None:
    """Alice's token on a connection's first request; the anonymous requests after it on that connection are
    charged to their address, never to her (each request is judged alone)."""
    port = int(world.edge.url.rsplit(":", 1)[1])
    name, value = bearer(world.ours, "alice")
    stats = f"POST {STATS} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.88\r\n"
    stats += "Content-Type: application/json\r\nContent-Length: 2\r\n"
    requests = f"GET /v1/fresh/{fresh()} HTTP/1.1\r\nHost: x\r\n{name}: {value}\r\n\r\n"
    requests += stats + "\r\n{}" + stats + "Connection: close\r\n\r\n{}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(requests.encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()
    statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
    assert statuses == [200, 200, 429]
    assert b"rate limit reached for ip:198.51.100.88" in data
    assert b"jwt:alice" not in data
