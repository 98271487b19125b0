"""CORS through meshlet-edge as a browser's fetch would exercise it, every part a real process on loopback: a dev
agent, the echo server (counting the calls that reach it, tests.support.edge_echo), and two edges: one that allows
two origins (one exact, one a pattern) with credentials, one that allows any origin without them.

    this test --HTTP (Origin, preflights)--> edge --mesh.channel--> echo"""

from __future__ import annotations

import json
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

WAIT_S = 20.0
SHOP = "https://shop.example.com"
CORS = {
    "allow_origins": [SHOP, "https://*.partners.example"],
    "allow_credentials": True,
    "max_age": "10m",
}


@dataclass
class Fronts:
    echo: EchoServer
    edge: EdgeProcess
    open_edge: EdgeProcess


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


@pytest.fixture(scope="module")
def fronts(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Fronts:
    folder: Path = tmp_path_factory.mktemp("edge-cors")
    agent = start_dev_agent(module_procs)
    echo = start_echo(module_procs, agent, folder)
    edge = start_edge(module_procs, folder, agent, {"cors": CORS}, name="edge")
    open_edge = start_edge(module_procs, folder, agent, {"cors": {"allow_origins": ["*"]}}, name="open-edge")
    return Fronts(echo, edge, open_edge)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


def vary(headers: Any) -> list[str]:
    return [v.strip() for v in headers.get("Vary", "").split(",")]


async def test_a_preflight_from_an_allowed_origin_is_answered_at_the_edge(fronts: Fronts, http) -> None:
    asked = {
        "Origin": SHOP,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization",
    }
    before = fronts.echo.log.read_text()
    async with http.options(f"{fronts.edge.url}/v1/echo", headers=asked) as response:
        assert response.status == 204
        headers = response.headers
        assert headers["Access-Control-Allow-Origin"] == SHOP
        assert headers["Access-Control-Allow-Credentials"] == "true"
        assert set(headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "HEAD", "POST"}  # the route table's
        assert headers["Access-Control-Allow-Headers"] == "content-type, authorization"
        assert headers["Access-Control-Max-Age"] == "600"
        assert vary(headers) == ["Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"]
    assert fronts.echo.log.read_text() == before  # no upstream call


async def test_a_pattern_origin_is_allowed_for_its_subdomains_only(fronts: Fronts, http) -> None:
    for origin, status in (("https://eu.partners.example", 204), ("https://partners.example", 403)):
        asked = {"Origin": origin, "Access-Control-Request-Method": "GET"}
        async with http.options(f"{fronts.edge.url}/v1/echo/x", headers=asked) as response:
            assert response.status == status, origin


async def test_a_preflight_from_another_origin_is_a_403_in_the_status_shape_without_cors_headers(
    fronts: Fronts, http
) -> None:
    asked = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    async with http.options(f"{fronts.edge.url}/v1/echo", headers=asked) as response:
        assert response.status == 403
        body = json.loads(await response.read())
        assert "Access-Control-Allow-Origin" not in response.headers
    assert body["code"] == 7
    assert "https://evil.example is not allowed" in body["message"]


async def test_a_preflight_for_a_header_not_allowed_is_refused(fronts: Fronts, http) -> None:
    asked = {"Origin": SHOP, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-secret"}
    async with http.options(f"{fronts.edge.url}/v1/echo/x", headers=asked) as response:
        assert response.status == 403
        assert "x-secret" in (await response.json())["message"]


async def test_an_actual_request_gets_its_origin_echoed_credentials_and_exposed_headers(fronts: Fronts, http) -> None:
    async with http.post(f"{fronts.edge.url}/v1/echo", json={"message": "cors-actual"}, headers={"Origin": SHOP}) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == SHOP
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
        exposed = r.headers["Access-Control-Expose-Headers"]
        for name in ("X-Request-Id", "RateLimit-Remaining", "ETag", "Cache-Status", "Deprecation", "Sunset", "Link"):
            assert name in exposed
        assert "Origin" in vary(r.headers)
    assert fronts.echo.calls("cors-actual", "EchoOnce") == 1


async def test_an_error_and_a_304_carry_the_cors_headers_too(fronts: Fronts, http) -> None:
    async with http.get(f"{fronts.edge.url}/v1/nothing", headers={"Origin": SHOP}) as response:
        assert response.status == 404
        assert response.headers["Access-Control-Allow-Origin"] == SHOP
    url = f"{fronts.edge.url}/v1/fresh/cors-etag"
    async with http.get(url, headers={"Origin": SHOP}) as response:
        etag = response.headers["ETag"]
    async with http.get(url, headers={"Origin": SHOP, "If-None-Match": etag}) as response:
        assert response.status == 304
        assert response.headers["Access-Control-Allow-Origin"] == SHOP


async def test_a_request_from_another_origin_is_served_without_cors_headers(fronts: Fronts, http) -> None:
    async with http.get(f"{fronts.edge.url}/v1/echo/x", headers={"Origin": "https://evil.example"}) as response:
        assert response.status == 200  # the browser, not the edge, withholds it from the page
        assert not [name for name in response.headers if name.startswith("Access-Control-")]
        assert "Origin" in vary(response.headers)


async def test_any_origin_without_credentials_is_a_star(fronts: Fronts, http) -> None:
    async with http.get(f"{fronts.open_edge.url}/v1/echo/x", headers={"Origin": "https://anyone.example"}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in r.headers
    asked = {"Origin": "https://anyone.example", "Access-Control-Request-Method": "GET"}
    async with http.options(f"{fronts.open_edge.url}/v1/echo/x", headers=asked) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
