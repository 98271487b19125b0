"""What need not be asked twice, as an HTTP client sees it through meshlet-edge, every part a real process on
loopback: a dev agent, the echo server (counting the calls that reach it, tests.support.edge_echo), an edge with
the in-process cache, and two edges sharing one real redis-server.

    this test --HTTP--> edge (memory) | edge A, edge B (redis) --mesh.channel--> echo

Routes: ``GET /v1/echo/{m}`` is cached (public, 30 s) and invalidated by ``POST /v1/echo``; ``GET /v1/private/{m}``
is cached per caller (private); ``GET /v1/fresh/{m}`` is not cached but, as a NO_SIDE_EFFECTS method, has ETags.
These edges have no auth: no request has a caller, so the private route shows that an anonymous request is never
cached; that one caller's entry is never found by another is shown through an edge's real auth in
tests/integration/test_edge_policies.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.support.agents import start_dev_agent
from tests.support.edge_echo import EchoServer, EdgeProcess, start_echo, start_edge
from tests.support.processes import Processes, processes
from tests.support.redis_server import RedisServer, start_redis

WAIT_S = 20.0  # bounds a request, never a timing assertion
IDENTITY = {"Accept-Encoding": "identity"}


def cache_section(store: str) -> dict[str, Any]:
    return {
        "forward_headers": ["x-echo-sleep-ms"],  # lets a test hold a call open upstream
        "compression": {"min_bytes": 0},  # every answer compressible is compressed when asked: weak ETags show
        "cache": {
            "store": store,
            "routes": [
                {"match": "GET /v1/echo/*", "ttl": "30s", "public": True, "invalidate": ["POST /v1/echo"]},
                {"match": "GET /v1/private/*", "ttl": "30s"},
            ],
        },
    }


@dataclass
class Fronts:
    echo: EchoServer
    edge: EdgeProcess
    edge_a: EdgeProcess
    edge_b: EdgeProcess
    redis: RedisServer


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


@pytest.fixture(scope="module")
def fronts(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Fronts:
    folder: Path = tmp_path_factory.mktemp("edge-cache")
    agent = start_dev_agent(module_procs)
    echo = start_echo(module_procs, agent, folder)
    redis = start_redis(module_procs)
    edge = start_edge(module_procs, folder, agent, cache_section("memory"), name="edge")
    edge_a = start_edge(module_procs, folder, agent, cache_section(redis.url), name="edge-a")
    edge_b = start_edge(module_procs, folder, agent, cache_section(redis.url), name="edge-b")
    return Fronts(echo, edge, edge_a, edge_b, redis)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes


async def get(http: aiohttp.ClientSession, url: str, **headers: str) -> Answer:
    async with http.get(url, headers={**IDENTITY, **headers}) as response:
        return Answer(response.status, response.headers, await response.read())


def fresh() -> str:
    return "m" + uuid.uuid4().hex[:12]


# ------------------------------------------------------------------------------------------ ETags


async def test_a_safe_get_has_a_strong_etag_and_if_none_match_answers_304_without_body(fronts: Fronts, http) -> None:
    url = f"{fronts.edge.url}/v1/fresh/{fresh()}"
    first = await get(http, url)
    assert first.status == 200
    etag = first.headers["ETag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert "Cache-Status" not in first.headers  # no rule caches /v1/fresh
    for condition in (etag, f'"other", {etag}', "W/" + etag, "*"):
        again = await get(http, url, **{"If-None-Match": condition})
        assert (again.status, again.body) == (304, b""), condition
        assert again.headers["ETag"] == etag
    changed = await get(http, url, **{"If-None-Match": '"something-else"'})
    assert changed.status == 200
    assert changed.body == first.body


async def test_a_compressed_answer_carries_the_same_tag_made_weak_and_both_forms_match(fronts: Fronts, http) -> None:
    url = f"{fronts.edge.url}/v1/fresh/{fresh()}"
    plain = await get(http, url)
    async with http.get(url, headers={"Accept-Encoding": "gzip"}) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        weak = response.headers["ETag"]
        assert "Accept-Encoding" in response.headers["Vary"]
    assert weak == "W/" + plain.headers["ETag"]
    not_modified = await get(http, url, **{"If-None-Match": weak})
    assert not_modified.status == 304
    async with http.get(url, headers={"Accept-Encoding": "gzip", "If-None-Match": plain.headers["ETag"]}) as response:
        assert response.status == 304
        assert response.headers["ETag"] == weak  # what the 200 would have carried
        assert "Accept-Encoding" in response.headers["Vary"]


async def test_a_post_has_no_etag(fronts: Fronts, http) -> None:
    async with http.post(f"{fronts.edge.url}/v1/echo", json={"message": fresh()}) as response:
        assert response.status == 200
        assert "ETag" not in response.headers


# ------------------------------------------------------------------------------------------ the cache


async def test_a_miss_is_stored_and_the_next_get_is_a_hit_that_never_reaches_the_upstream(fronts: Fronts, http) -> None:
    message = fresh()
    url = f"{fronts.edge.url}/v1/echo/{message}"
    miss = await get(http, url)
    assert miss.status == 200
    assert miss.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"
    assert miss.headers["Cache-Control"] == "public, max-age=30"
    hit = await get(http, url)
    assert hit.status == 200
    assert hit.body == miss.body
    assert hit.headers["Cache-Status"].startswith("meshlet-edge; hit; ttl=")
    assert int(hit.headers["Age"]) >= 0
    assert hit.headers["ETag"] == miss.headers["ETag"]
    assert hit.headers["Content-Type"] == miss.headers["Content-Type"]
    not_modified = await get(http, url, **{"If-None-Match": miss.headers["ETag"]})
    assert not_modified.status == 304
    assert not_modified.headers["Cache-Status"].startswith("meshlet-edge; hit")
    assert fronts.echo.calls(message) == 1


async def test_the_query_is_part_of_the_key_in_any_order(fronts: Fronts, http) -> None:
    message = fresh()
    base = f"{fronts.edge.url}/v1/echo/{message}"
    await get(http, base + "?payload=YQ==&x=1")  # payload is a field; x is not: 400, not stored
    first = await get(http, base + "?payload=YQ==")
    again = await get(http, base + "?payload=YQ==")
    other = await get(http, base + "?payload=Yg==")
    assert first.headers["Cache-Status"].startswith("meshlet-edge; fwd=miss")
    assert again.headers["Cache-Status"].startswith("meshlet-edge; hit")
    assert other.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"


async def test_no_cache_on_the_request_bypasses_the_cache(fronts: Fronts, http) -> None:
    message = fresh()
    url = f"{fronts.edge.url}/v1/echo/{message}"
    await get(http, url)
    bypass = await get(http, url, **{"Cache-Control": "no-cache"})
    assert bypass.status == 200
    assert bypass.headers["Cache-Status"] == "meshlet-edge; fwd=bypass"
    assert fronts.echo.calls(message) == 2
    assert (await get(http, url, **{"Cache-Control": "no-store"})).headers["Cache-Status"] == "meshlet-edge; fwd=bypass"
    assert fronts.echo.calls(message) == 3


async def test_a_private_route_caches_nothing_for_a_request_without_a_caller(fronts: Fronts, http) -> None:
    message = fresh()
    url = f"{fronts.edge.url}/v1/private/{message}"
    for _ in range(2):
        answer = await get(http, url)
        assert answer.status == 200
        assert answer.headers["Cache-Status"] == "meshlet-edge; fwd=bypass; detail=no-caller"
        assert "Cache-Control" not in answer.headers
    assert fronts.echo.calls(message) == 2


async def test_twenty_concurrent_misses_for_one_key_reach_the_upstream_once(fronts: Fronts, http) -> None:
    message = fresh()
    url = f"{fronts.edge.url}/v1/echo/{message}"
    # the first call is held upstream for a while, so that the other 19 arrive while it is in flight
    answers = await asyncio.gather(*(get(http, url, **{"X-Echo-Sleep-Ms": "1500"}) for _ in range(20)))
    assert [a.status for a in answers] == [200] * 20
    assert len({a.body for a in answers}) == 1
    assert fronts.echo.calls(message) == 1
    statuses = [a.headers["Cache-Status"] for a in answers]
    assert statuses.count("meshlet-edge; fwd=miss; stored") == 1
    assert all(
        s in ("meshlet-edge; fwd=miss; stored", "meshlet-edge; fwd=miss; collapsed") or "hit" in s for s in statuses
    )
    assert any("collapsed" in s for s in statuses)


async def test_an_error_is_shared_with_its_collapsed_requests_but_not_stored(fronts: Fronts, http) -> None:
    url = f"{fronts.edge.url}/v1/echo/{fresh()}"
    answers = await asyncio.gather(
        *(get(http, url, **{"X-Echo-Sleep-Ms": "1000", "grpc-timeout": "300m"}) for _ in range(5))
    )
    assert {a.status for a in answers} == {504}
    assert all("stored" not in a.headers["Cache-Status"] for a in answers)
    assert (await get(http, url)).headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"


async def test_a_write_through_the_edge_invalidates_the_entries_it_names(fronts: Fronts, http) -> None:
    message = fresh()
    url = f"{fronts.edge.url}/v1/echo/{message}"
    await get(http, url)
    assert (await get(http, url)).headers["Cache-Status"].startswith("meshlet-edge; hit")
    async with http.post(f"{fronts.edge.url}/v1/echo", json={"message": "write"}) as response:
        assert response.status == 200
    after = await get(http, url)
    assert after.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"
    assert fronts.echo.calls(message) == 2


async def test_the_cache_counts_its_outcomes_on_the_admin_port(fronts: Fronts, http) -> None:
    async with http.get(fronts.edge.admin_url + "/metrics") as response:
        text = await response.text()
    assert 'meshlet_edge_cache_answers_total{outcome="hit"}' in text
    assert 'meshlet_edge_cache_answers_total{outcome="invalidation"}' in text


# ------------------------------------------------------------------------------------------ Redis


async def test_two_edges_share_one_redis_entries_and_invalidations(fronts: Fronts, http) -> None:
    message = fresh()
    path = f"/v1/echo/{message}"
    stored = await get(http, fronts.edge_a.url + path)
    assert stored.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored"
    hit = await get(http, fronts.edge_b.url + path)
    assert hit.headers["Cache-Status"].startswith("meshlet-edge; hit"), "edge B did not find edge A's entry"
    assert hit.body == stored.body
    assert hit.headers["ETag"] == stored.headers["ETag"]
    assert fronts.echo.calls(message) == 1
    async with http.post(fronts.edge_b.url + "/v1/echo", json={"message": "write"}) as response:
        assert response.status == 200
    after = await get(http, fronts.edge_a.url + path)
    assert after.headers["Cache-Status"] == "meshlet-edge; fwd=miss; stored", "edge B's write did not reach edge A"
    assert fronts.echo.calls(message) == 2


async def test_zz_redis_gone_is_a_bypass_never_a_failed_request(fronts: Fronts, http) -> None:
    """Last in the module: it stops the Redis the other Redis test needs."""
    fronts.redis.child.stop()
    message = fresh()
    for _ in range(2):
        answer = await get(http, f"{fronts.edge_a.url}/v1/echo/{message}")
        assert answer.status == 200
        assert answer.headers["Cache-Status"] == "meshlet-edge; fwd=bypass; detail=store-error"
    async with http.post(fronts.edge_a.url + "/v1/echo", json={"message": "write"}) as response:
        assert response.status == 200  # its invalidation failed: counted and logged, the write answered
    assert fronts.echo.calls(message) == 2
    assert "the cache store failed" in fronts.edge_a.child.output()
