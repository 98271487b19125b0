"""The edge's policies together, through its real auth, as a client outside the mesh sees them: whose cached answer
a caller gets, whose plan it spends, and HEAD as the GET it is. Every part real and on loopback: a dev agent, the
SDK echo server (tests/support/edge_echo.py; ``metadata?<tag>`` answers the metadata it received, so a body names
the caller the edge sent upstream, and every execution is logged, so calls are counted at the server), a token
issuer's keys (tests/support/jwt_issuer.py, here read from a JWKS file), an API keys file and one meshlet-edge:

    GET  /v1/private/{m}     a token or an API key; cached per caller (private); costs nothing
    GET  /v1/echo/{m}        a token or an API key; cached for everyone (public); costs nothing
    GET  /v1/fresh/{m}       a token or an API key; not cached (ETags); charged to the caller's plan
    POST .../Echo/Stats      no credential: anonymous, charged to the client's address
    GET  /v1/stream/{m}      a server stream: no HEAD

Plans are token buckets refilled one token in 1000 s (default: 1, pro: 3), so nothing refills during a test; API
key P is on pro, D names no plan; a token's ``plan`` claim names its plan. The edge trusts loopback as a proxy,
so each anonymous caller is its own address by X-Forwarded-For."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.support.agents import start_dev_agent
from tests.support.edge_echo import EchoServer, EdgeProcess, start_echo, start_edge
from tests.support.jwt_issuer import TestIssuer
from tests.support.processes import Processes, processes

WAIT_S = 20.0  # bounds a request, never a timing assertion
STATS = "/meshlet_api.echo.v1.Echo/Stats"
KEYS = {"key-a": {"owner": "alice"}, "key-b": {"owner": "bob"}, "key-p": {"owner": "pro-shop", "plan": "pro"}}
KEYS |= {"key-d": {"owner": "plain-shop"}}
FAILURES = 5  # failed credentials one address may send before it is refused unchecked
CHALLENGE = 'Bearer realm="meshlet-edge"'


@dataclass
class World:
    edge: EdgeProcess
    echo: EchoServer
    issuer: TestIssuer


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


@pytest.fixture(scope="module")
def world(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("edge-policies")
    agent = start_dev_agent(module_procs)
    echo = start_echo(module_procs, agent, folder)
    issuer = TestIssuer(folder)
    issuer.add_key("ec-1", "ES256")
    (folder / "jwks.json").write_text(json.dumps(issuer.jwks()))
    keys = folder / "keys.yaml"
    keys.write_text(json.dumps({hashlib.sha256(key.encode()).hexdigest(): entry for key, entry in KEYS.items()}))
    trusted = {"issuer": issuer.issuer, "audiences": ["shop"], "jwks_file": str(folder / "jwks.json")}
    credential = ["GET /v1/private/*", "GET /v1/echo/*", "GET /v1/fresh/*"]
    section: dict[str, Any] = {
        "auth": {
            "issuers": [{**trusted, "algorithms": ["ES256"]}],
            "api_keys": {"source": "file", "path": str(keys)},
            "routes": [{"match": match, "auth": "any"} for match in credential],
        },
        "consumers": {"plan_claim": "plan"},
        "plans": {"default": {"rate_per_s": 0.001, "burst": 1}, "pro": {"rate_per_s": 0.001, "burst": 3}},
        "limits": {
            "store": "memory",
            "trusted_proxies": ["127.0.0.0/8"],
            "routes": [{"match": "GET /v1/private/*", "cost": 0}, {"match": "GET /v1/echo/*", "cost": 0}],
            "failed_credentials": {"rate_per_s": 0.001, "burst": FAILURES},
        },
        "cache": {
            "store": "memory",
            "routes": [
                {"match": "GET /v1/private/*", "ttl": "30s"},
                {"match": "GET /v1/echo/*", "ttl": "30s", "public": True},
            ],
        },
    }
    edge = start_edge(module_procs, folder, agent, section, name="edge-policies")
    yield World(edge, echo, issuer)
    issuer.close()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def upstream_saw(self) -> str:
        """The x-meshlet-subject the echo server received, from a ``metadata?`` answer."""
        return str(json.loads(self.json()["message"])["x-meshlet-subject"])


async def send(http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str] | None = None) -> Answer:
    sent = {"Accept-Encoding": "identity", **(headers or {})}
    body = None
    if method == "POST":  # Stats takes an empty message; aiohttp alone would say application/octet-stream (415)
        body, sent["Content-Type"] = b"{}", "application/json"
    async with http.request(method, url, headers=sent, data=body) as response:
        return Answer(response.status, response.headers, await response.read())


def key(name: str) -> dict[str, str]:
    return {"X-Api-Key": name}


def token(world: World, sub: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.issuer.token('ec-1', sub=sub, **claims)}"}


def fresh(prefix: str = "m") -> str:
    return prefix + uuid.uuid4().hex[:12]


# ------------------------------------------------------------------------------------------ whose cached answer


async def test_one_callers_private_entry_is_never_served_to_another(world: World, http) -> None:
    tag = fresh()
    url = f"{world.edge.url}/v1/private/metadata%3F{tag}"  # the echo server answers the metadata it received
    a_miss = await send(http, "GET", url, key("key-a"))
    assert a_miss.status == 200, a_miss.body
    assert a_miss.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"
    assert a_miss.headers["Cache-Control"] == "private, max-age=30"
    assert a_miss.upstream_saw() == "alice"

    b_miss = await send(http, "GET", url, key("key-b"))
    assert b_miss.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"  # never alice's entry
    assert b_miss.upstream_saw() == "bob"
    b_hit = await send(http, "GET", url, key("key-b"))
    assert b_hit.headers["Cache-Status"].startswith("meshlet-edge; hit")
    assert b_hit.body == b_miss.body

    a_hit = await send(http, "GET", url, key("key-a"))
    assert a_hit.headers["Cache-Status"].startswith("meshlet-edge; hit")
    assert a_hit.body == a_miss.body  # alice's own answer, x-request-id and all
    assert a_hit.upstream_saw() == "alice"

    # a token whose subject is alice is another caller than the API key alice owns: its own miss
    alice_token = await send(http, "GET", url, token(world, "alice"))
    assert alice_token.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"
    assert alice_token.body != a_miss.body
    nobody = await send(http, "GET", url)
    assert (nobody.status, nobody.headers["WWW-Authenticate"]) == (401, CHALLENGE)  # the cache comes after auth
    assert world.echo.calls(f"metadata?{tag}") == 3  # alice's key, bob's key, alice's token: counted at the server


async def test_a_public_entry_is_shared_by_every_caller(world: World, http) -> None:
    tag = fresh()
    url = f"{world.edge.url}/v1/echo/metadata%3F{tag}"
    a_miss = await send(http, "GET", url, key("key-a"))
    assert a_miss.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"
    assert a_miss.headers["Cache-Control"] == "public, max-age=30"
    b_hit = await send(http, "GET", url, key("key-b"))
    assert b_hit.headers["Cache-Status"].startswith("meshlet-edge; hit")
    assert b_hit.body == a_miss.body  # public: one entry, whoever asked first
    assert world.echo.calls(f"metadata?{tag}") == 1


# ------------------------------------------------------------------------------------------ whose plan


def spent(answers: list[Answer]) -> list[tuple[int, str]]:
    return [(a.status, a.headers.get("RateLimit-Remaining", "-")) for a in answers]


def refused_subject(answer: Answer) -> str:
    assert answer.status == 429, answer.body
    assert int(answer.headers["Retry-After"]) > 60  # a token comes back only after ~1000 s
    assert answer.json()["code"] == 8  # RESOURCE_EXHAUSTED
    [failure] = [d for d in answer.json()["details"] if d["@type"].endswith("google.rpc.QuotaFailure")]
    return str(failure["violations"][0]["subject"])


async def test_an_api_keys_plan_decides_what_its_owner_may_spend(world: World, http) -> None:
    url = f"{world.edge.url}/v1/fresh/{fresh()}"
    pro = [await send(http, "GET", url, key("key-p")) for _ in range(4)]
    assert spent(pro) == [(200, "2"), (200, "1"), (200, "0"), (429, "0")]  # pro's 3
    assert {a.headers["RateLimit-Policy"] for a in pro} == {"3;w=3000"}
    assert {a.headers["RateLimit-Limit"] for a in pro} == {"3"}
    assert all(int(a.headers["RateLimit-Reset"]) > 0 for a in pro)
    assert refused_subject(pro[3]) == "api_key:pro-shop"
    plain = [await send(http, "GET", url, key("key-d")) for _ in range(2)]  # its own bucket, untouched by pro's
    assert spent(plain) == [(200, "0"), (429, "0")]  # no plan on the key: default's 1
    assert {a.headers["RateLimit-Policy"] for a in plain} == {"1;w=1000"}
    assert refused_subject(plain[1]) == "api_key:plain-shop"


async def test_an_anonymous_caller_is_charged_by_its_address_on_the_default_plan(world: World, http) -> None:
    address = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    forwarded = {"X-Forwarded-For": f"{address}, 127.0.0.1"}
    first, second = [await send(http, "POST", world.edge.url + STATS, forwarded) for _ in range(2)]
    assert spent([first, second]) == [(200, "0"), (429, "0")]
    assert first.headers["RateLimit-Policy"] == "1;w=1000"
    assert refused_subject(second) == f"ip:{address}"
    # A key on a route that needs no credential proves nothing there: still the address's (spent) bucket.
    keyed = await send(http, "POST", world.edge.url + STATS, {**forwarded, **key("key-p")})
    assert refused_subject(keyed) == f"ip:{address}"
    other = await send(http, "POST", world.edge.url + STATS, {"X-Forwarded-For": "203.0.113.77, 127.0.0.1"})
    assert other.status == 200  # another address, another bucket


async def test_an_address_that_keeps_failing_auth_is_refused_before_its_credentials_are_checked(
    world: World, http
) -> None:
    """Guessing API keys (or sending bogus tokens, each a signature check) costs the address its failures' budget,
    on a route the limits exempt too; then even a good key from it is refused unchecked, others are not."""
    url = f"{world.edge.url}/v1/echo/{fresh()}"  # cost 0 in edge.limits.routes: failures are charged anyway
    address = f"192.0.2.{uuid.uuid4().int % 250 + 1}"
    forwarded = {"X-Forwarded-For": f"{address}, 127.0.0.1"}
    guesses = [await send(http, "GET", url, {**forwarded, **key(fresh("guess-"))}) for _ in range(FAILURES + 1)]
    assert [a.status for a in guesses] == [401] * FAILURES + [429]
    assert refused_subject(guesses[-1]) == f"failed-credentials:ip:{address}"
    right_key = await send(http, "GET", url, {**forwarded, **key("key-a")})
    assert refused_subject(right_key) == f"failed-credentials:ip:{address}"  # not checked: no oracle for guesses
    bogus_token = await send(http, "GET", url, {**forwarded, "Authorization": "Bearer e30.e30.c2ln"})
    assert bogus_token.status == 429
    elsewhere = {"X-Forwarded-For": "203.0.113.9, 127.0.0.1"}
    assert (await send(http, "GET", url, {**elsewhere, **key("key-a")})).status == 200
    assert (await send(http, "GET", url, {**elsewhere, **key(fresh("guess-"))})).status == 401


async def test_a_tokens_plan_claim_decides_its_plan_and_an_unknown_plan_is_the_default(world: World, http) -> None:
    url = f"{world.edge.url}/v1/fresh/{fresh()}"
    pro_sub, plain_sub, odd_sub = fresh("carol-"), fresh("dave-"), fresh("erin-")
    pro = [await send(http, "GET", url, token(world, pro_sub, plan="pro")) for _ in range(4)]
    assert spent(pro) == [(200, "2"), (200, "1"), (200, "0"), (429, "0")]
    assert refused_subject(pro[3]) == f"jwt:{pro_sub}"
    plain = [await send(http, "GET", url, token(world, plain_sub)) for _ in range(2)]  # no plan claim: default
    assert spent(plain) == [(200, "0"), (429, "0")]
    odd = [await send(http, "GET", url, token(world, odd_sub, plan="platinum")) for _ in range(2)]
    assert spent(odd) == [(200, "0"), (429, "0")]  # a plan this edge does not define: default
    assert odd[0].headers["RateLimit-Policy"] == "1;w=1000"
    assert world.edge.child.output().count("no plan 'platinum' in edge.plans") == 1  # logged once, not per request


# ------------------------------------------------------------------------------------------ HEAD


async def test_head_answers_what_get_answers_without_the_body_and_is_charged_as_a_get(world: World, http) -> None:
    url = f"{world.edge.url}/v1/fresh/{fresh()}"
    caller = token(world, fresh("heidi-"), plan="pro")
    get = await send(http, "GET", url, caller)
    head = await send(http, "HEAD", url, caller)
    assert (get.status, head.status) == (200, 200)
    assert head.body == b""
    assert int(head.headers["Content-Length"]) == len(get.body) > 0
    for name in ("Content-Type", "ETag", "RateLimit-Policy", "RateLimit-Limit"):
        assert head.headers[name] == get.headers[name], name
    assert (get.headers["RateLimit-Remaining"], head.headers["RateLimit-Remaining"]) == ("2", "1")
    assert "X-Request-Id" in head.headers
    unchanged = await send(http, "HEAD", url, {**caller, "If-None-Match": get.headers["ETag"]})
    assert (unchanged.status, unchanged.headers["ETag"]) == (304, get.headers["ETag"])
    refused = await send(http, "HEAD", url, caller)
    assert (refused.status, refused.body) == (429, b"")
    assert int(refused.headers["Retry-After"]) > 60


async def test_head_needs_the_credential_its_get_needs(world: World, http) -> None:
    url = f"{world.edge.url}/v1/fresh/{fresh()}"
    missing = await send(http, "HEAD", url)
    assert (missing.status, missing.headers["WWW-Authenticate"], missing.body) == (401, CHALLENGE, b"")
    unknown = await send(http, "HEAD", url, key("key-nobody"))
    assert unknown.status == 401
    assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]


async def test_head_is_served_from_the_gets_cache_entry_and_its_miss_stores_the_whole_answer(
    world: World, http
) -> None:
    message = fresh()
    url = f"{world.edge.url}/v1/echo/{message}"
    miss = await send(http, "HEAD", url, key("key-a"))
    assert (miss.status, miss.body) == (200, b"")
    assert miss.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"
    hit = await send(http, "GET", url, key("key-b"))
    assert hit.headers["Cache-Status"].startswith("meshlet-edge; hit")
    assert hit.json()["message"] == message  # the entry the HEAD stored has the body
    assert len(hit.body) == int(miss.headers["Content-Length"])
    assert hit.headers["ETag"] == miss.headers["ETag"]
    again = await send(http, "HEAD", url, key("key-a"))
    assert again.headers["Cache-Status"].startswith("meshlet-edge; hit")
    assert again.headers["Content-Length"] == miss.headers["Content-Length"]
    assert world.echo.calls(message) == 1


async def test_head_of_a_stream_or_of_a_post_only_path_is_a_405_and_allow_lists_head_beside_get(
    world: World, http
) -> None:
    stream = await send(http, "HEAD", f"{world.edge.url}/v1/stream/x")
    assert (stream.status, stream.headers["Allow"]) == (405, "GET")
    post_only = await send(http, "HEAD", f"{world.edge.url}/v1/echo")
    assert (post_only.status, post_only.headers["Allow"]) == (405, "POST")
    wrong = await send(http, "DELETE", f"{world.edge.url}/v1/fresh/x")
    assert (wrong.status, wrong.headers["Allow"]) == (405, "GET, HEAD")
    assert "use GET, HEAD" in wrong.json()["message"]
    async with http.get(f"{world.edge.url}/v1/stream/x", headers={"Accept": "application/x-ndjson"}) as response:
        assert response.status == 200  # the stream itself is served to a GET
        assert len((await response.text()).splitlines()) == 3
