"""Rate limits and quotas shared by edge replicas: a dev agent, the shop's inventory behind a sidecar, real
redis-server processes and two pairs of meshlet-edge processes, each pair charging one Redis.

Pair "quota" holds a plan of 5 requests a calendar minute; pair "bucket" a token bucket of 3 refilled so slowly
(one token in 1000 s) that no token comes back during the test, its first edge failing open and its second closed
when Redis goes away. Each test is its own consumer: the edges trust loopback as a proxy, so the client address
comes from X-Forwarded-For. The last test puts the limits behind a stand-in for the edge's auth, to show a
caller's plan at work."""

from __future__ import annotations

import datetime
import json
import random
import signal
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from meshlet.config.schema import EdgeConfig
from meshlet_edge import caller
from meshlet_edge.limits.decision import Plan, Quota
from meshlet_edge.limits.memory_store import MemoryStore
from meshlet_edge.limits.policy import Limits
from meshlet_edge.limits.redis_store import RedisStore
from meshlet_edge.stages import prepare_hook, staged
from meshlet_shop_api.inventory.v1 import inventory_pb2
from tests.support.agents import Agent, start_dev_agent
from tests.support.descriptor_sets import write_descriptor_set
from tests.support.processes import Child, Processes, eventually, free_port, http_ok, processes, wait_until
from tests.support.redis_server import RedisServer, start_redis
from tests.support.sidecars import START_S, start_sidecar, write_config

pytestmark = pytest.mark.slow

WAIT_S = 20.0  # bounds waiting, never a timing assertion
# Generous, so that a loaded test machine never turns a slow answer into a store error (which would let a request
# through uncounted); the stalled-Redis test still waits only this long.
STORE_TIMEOUT = "2s"
ITEM = "/v1/inventory/items/sku-tea"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@dataclass
class EdgeProcess:
    child: Child
    url: str
    admin_url: str


@dataclass
class Mesh:
    procs: Processes
    folder: Path
    agent: Agent
    descriptors: Path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("limits")
    with processes(tmp_path_factory.mktemp("logs")) as procs:
        agent = start_dev_agent(procs)
        port = free_port()
        argv = [sys.executable, "-m", "meshlet_shop.inventory", "--port", str(port), "--instance-id", "inventory-1"]
        inventory = procs.start(argv, name="inventory")
        wait_until(lambda: f"listening on {port}" in inventory.output() or not inventory.alive(), START_S, "inventory")
        plaintext = {"tls": {"source": "off"}, "consul": {"address": agent.url}}
        service = {"name": "inventory", "check_ttl": "1s", "drain_grace": "1s"}
        start_sidecar(procs, folder, "inventory", {**plaintext, "service": service}, app=f"127.0.0.1:{port}")
        descriptors = write_descriptor_set(folder / "shop.pb", inventory_pb2.DESCRIPTOR)
        yield Mesh(procs, folder, agent, descriptors)


def start_edge(mesh: Mesh, name: str, plans: dict[str, Any], limits: dict[str, Any]) -> EdgeProcess:
    config = {
        "tls": {"source": "off"},
        "consul": {"address": mesh.agent.url},
        "service": {"name": name},
        "edge": {
            "services": {"shop.inventory.v1.Inventory": "inventory"},
            "descriptor_sets": [str(mesh.descriptors)],
            "plans": plans,
            "limits": {"trusted_proxies": ["127.0.0.0/8"], **limits},
        },
    }
    path = write_config(mesh.folder / f"{name}.yaml", config)
    listen, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "meshlet_edge", "--config", str(path), "--listen", f"127.0.0.1:{listen}"]
    child = mesh.procs.start([*argv, "--admin-addr", f"127.0.0.1:{admin}"], name=name)
    admin_url = f"http://127.0.0.1:{admin}"
    wait_until(lambda: http_ok(admin_url + "/ready") or not child.alive(), START_S, f"{name} to turn ready")
    assert child.alive(), child.output()
    return EdgeProcess(child, f"http://127.0.0.1:{listen}", admin_url)


@pytest.fixture(scope="module")
def quota_pair(mesh: Mesh) -> list[EdgeProcess]:
    redis = start_redis(mesh.procs)
    plans = {"default": {"per_minute": 5}}
    limits = {"store": redis.url, "timeout": STORE_TIMEOUT}
    return [start_edge(mesh, f"quota-{n}", plans, limits) for n in (1, 2)]


@dataclass
class BucketPair:
    redis: RedisServer
    open: EdgeProcess
    closed: EdgeProcess


@pytest.fixture(scope="module")
def bucket_pair(mesh: Mesh) -> BucketPair:
    redis = start_redis(mesh.procs)
    plans = {"default": {"rate_per_s": 0.001, "burst": 3}}
    store = {"store": redis.url, "timeout": STORE_TIMEOUT}
    opened = start_edge(mesh, "bucket-open", plans, {**store, "on_store_error": "open"})
    closed = start_edge(mesh, "bucket-closed", plans, {**store, "on_store_error": "closed"})
    return BucketPair(redis, opened, closed)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


async def get(http: aiohttp.ClientSession, edge: EdgeProcess, client: str) -> Answer:
    async with http.get(edge.url + ITEM, headers={"X-Forwarded-For": f"{client}, 127.0.0.1"}) as response:
        return Answer(response.status, await response.json(), dict(response.headers))


def admin_get(edge: EdgeProcess, path: str) -> str:
    with urllib.request.urlopen(edge.admin_url + path, timeout=WAIT_S) as response:
        return str(response.read().decode())


def decisions(edge: EdgeProcess, decision: str) -> float:
    for line in admin_get(edge, "/metrics").splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("meshlet_edge_limit_decisions_total{") and f'decision="{decision}"' in name:
            assert 'plan="default"' in name, line
            return float(value)
    return 0.0


def a_fresh_minute() -> None:
    """Starts a test early enough in a calendar minute that its requests cannot straddle two."""
    second = datetime.datetime.now(datetime.UTC).second
    if second > 45:
        time.sleep(60.5 - second)


def detail(body: dict[str, Any], type_url: str) -> dict[str, Any]:
    found = [d for d in body.get("details", []) if d["@type"] == type_url]
    assert found, f"no {type_url} in {body}"
    return dict(found[0])


# ------------------------------------------------------------------------------------------ shared limits


async def test_two_replicas_allow_a_minute_quota_once_between_them(quota_pair: list[EdgeProcess], http) -> None:
    a_fresh_minute()
    answers = [await get(http, quota_pair[n % 2], "198.51.100.1") for n in range(12)]
    assert [a.status for a in answers] == [200] * 5 + [429] * 7  # 5 in all, not 5 per replica
    assert [a.headers["RateLimit-Remaining"] for a in answers[:5]] == ["4", "3", "2", "1", "0"]
    assert {a.headers["RateLimit-Limit"] for a in answers} == {"5"}
    assert {a.headers["RateLimit-Policy"] for a in answers} == {"5;w=60"}
    refused = answers[5]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.body["code"] == 8  # RESOURCE_EXHAUSTED
    violation = detail(refused.body, QUOTA_FAILURE)["violations"][0]
    assert violation["subject"] == "ip:198.51.100.1"
    assert (violation.get("quotaId", "default/minute"), violation.get("quotaValue", "5")) == ("default/minute", "5")
    assert "plan default" in violation["description"]
    assert "minute" in violation["description"]
    assert detail(refused.body, RETRY_INFO)["retryDelay"] == refused.headers["Retry-After"] + "s"
    assert sum(decisions(edge, "allowed") for edge in quota_pair) >= 5
    assert sum(decisions(edge, "refused") for edge in quota_pair) >= 7
    assert sum(decisions(edge, "store_error_open") for edge in quota_pair) == 0


async def test_usage_on_the_admin_port_shows_the_consumers_standing(quota_pair: list[EdgeProcess], http) -> None:
    a_fresh_minute()
    for edge in quota_pair:
        assert (await get(http, edge, "198.51.100.5")).status == 200
    usage = json.loads(admin_get(quota_pair[0], "/usage?consumer=ip:198.51.100.5"))
    assert usage["plan"] == "default"
    assert usage["bucket"] is None
    [minute] = usage["windows"]
    assert (minute["window"], minute["used"], minute["limit"], minute["remaining"]) == ("minute", 2, 5, 3)
    assert minute["reset"].endswith(":00Z")  # the calendar minute's end, UTC
    stranger = json.loads(admin_get(quota_pair[1], "/usage?consumer=ip:203.0.113.99"))
    assert stranger["windows"][0]["used"] == 0  # reading charges nothing


async def test_two_replicas_share_one_token_bucket(bucket_pair: BucketPair, http) -> None:
    edges = [bucket_pair.open, bucket_pair.closed]
    answers = [await get(http, edges[n % 2], "198.51.100.2") for n in range(6)]
    assert [a.status for a in answers] == [200, 200, 200, 429, 429, 429]
    assert answers[0].headers["RateLimit-Policy"] == "3;w=3000"
    assert int(answers[3].headers["Retry-After"]) > 60  # a token comes back only after ~1000s
    assert "requests a second" in detail(answers[3].body, QUOTA_FAILURE)["violations"][0]["description"]


# ------------------------------------------------------------------------------------------ Redis goes away


async def test_a_stalled_redis_is_a_store_error_not_a_hung_request(bucket_pair: BucketPair, http) -> None:
    bucket_pair.redis.child.signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        passed = await get(http, bucket_pair.open, "198.51.100.6")
        refused = await get(http, bucket_pair.closed, "198.51.100.6")
    finally:
        bucket_pair.redis.child.signal(signal.SIGCONT)
    assert passed.status == 200, passed.body
    assert refused.status == 503, refused.body
    assert "did not answer in time" in refused.body["message"]

    async def answering_again() -> bool:
        return (await get(http, bucket_pair.closed, "198.51.100.7")).status == 200

    await eventually(answering_again, "the closed edge to use Redis again", WAIT_S)


async def test_without_redis_each_edge_fails_as_configured_then_recovers(
    mesh: Mesh, bucket_pair: BucketPair, http
) -> None:
    port = bucket_pair.redis.port
    bucket_pair.redis.child.stop()
    passed = await get(http, bucket_pair.open, "198.51.100.3")
    assert passed.status == 200, passed.body  # open: through, unlimited
    assert "RateLimit-Remaining" not in passed.headers
    refused = await get(http, bucket_pair.closed, "198.51.100.3")
    assert refused.status == 503, refused.body  # closed: the store's failure, not the caller's
    assert refused.body["code"] == 14  # UNAVAILABLE
    assert refused.headers["Retry-After"] == "1"
    assert decisions(bucket_pair.open, "store_error_open") >= 1
    assert decisions(bucket_pair.closed, "store_error_closed") >= 1
    assert "rate-limit store" in bucket_pair.closed.child.output()

    start_redis(mesh.procs, port=port)  # the same address, empty

    async def limiting_again() -> bool:
        return (await get(http, bucket_pair.closed, "198.51.100.4")).status == 200

    await eventually(limiting_again, "the closed edge to reach the restarted Redis", WAIT_S)
    later = [await get(http, bucket_pair.open, "198.51.100.4") for _ in range(3)]
    assert [a.status for a in later] == [200, 200, 429]  # the bucket of 3, shared again


# ------------------------------------------------------------------------------------------ the caller's plan


async def test_an_authenticated_callers_plan_and_identity_decide_what_it_may_spend(http) -> None:
    """The edge's limits in an aiohttp app on loopback, behind a stand-in for auth that sets the Caller as the
    edge's auth does (meshlet_edge.caller.current): an API key on plan pro, anonymous callers by address."""
    plans = {"default": {"per_minute": 1}, "pro": {"per_minute": 3}}
    limits = Limits(EdgeConfig.model_validate({"plans": plans}))

    async def auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        key = request.headers.get("X-Api-Key")
        if key:
            caller.current.set(caller.Caller(key, "api_key", "pro", frozenset(), {}))
        return await handler(request)

    async def handle(request: web.Request) -> web.StreamResponse:
        refused = await limits.admit(request, "/shop.inventory.v1.Inventory/GetItem")
        return refused or web.json_response({})

    app = web.Application()  # the edge's own arrangement: its stages around the handler, its header hooks
    app.on_response_prepare.append(prepare_hook([limits.add_headers]))
    app.router.add_get("/item", staged([auth, limits.middleware()], handle))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/item"
    try:
        a_fresh_minute()
        keyed = []
        for _ in range(4):
            async with http.get(url, headers={"X-Api-Key": "acme"}) as response:
                keyed.append((response.status, response.headers.get("RateLimit-Policy")))
        assert keyed == [(200, "3;w=60")] * 3 + [(429, "3;w=60")]  # pro's 3, not default's 1
        async with http.get(url) as response:  # the same address, no key: its own consumer, on default
            assert (response.status, response.headers["RateLimit-Policy"]) == (200, "1;w=60")
        assert (await limits.usage("api_key:acme"))["plan"] == "pro"
        assert (await limits.usage("ip:127.0.0.1"))["plan"] == "default"
    finally:
        await runner.cleanup()
        await limits.close()


# ------------------------------------------------------------------------------------------ one arithmetic


async def test_the_redis_script_decides_exactly_as_the_in_process_store(mesh: Mesh) -> None:
    """The same seeded run of charges (costs 0-3, the clock jumping across minutes, days and months) through the
    in-process store and the Lua script on a real Redis: every outcome is the same, tokens to the last bit."""
    redis = start_redis(mesh.procs)
    shared, memory = RedisStore(redis.url, 5.0), MemoryStore()
    plans = {
        "ip:a": Plan("both", 0.5, 3, (Quota("minute", 4), Quota("day", 9), Quota("month", 20))),
        "ip:b": Plan("quotas", None, 0, (Quota("minute", 2), Quota("month", 7))),
        "ip:c": Plan("bucket", 3.0, 2, ()),
    }
    chance = random.Random(14)
    now = datetime.datetime(2026, 1, 31, 23, 58, 50, tzinfo=datetime.UTC).timestamp()
    try:
        for step in range(600):
            now += chance.choice([0.0, 0.1, 0.7, 2.5, 13.0, 61.0, 3600.0 * 7, 86400.0 * 9])
            consumer = chance.choice(sorted(plans))
            cost = chance.choice([0, 1, 1, 1, 2, 3])
            expected = await memory.charge(consumer, plans[consumer], cost, now)
            found = await shared.charge(consumer, plans[consumer], cost, now)
            assert found == expected, f"step {step}: {consumer} cost {cost} at {now}"
    finally:
        await shared.close()
