"""The dev agent answers only requests addressed to itself, over real HTTP: a browser page on the same machine can
neither write through a cross-site request (a ``text/plain`` POST needs no CORS preflight) nor read a leaf's
private key through DNS rebinding (its own name in ``Host``), and no leaf is issued for a name that is not a
valid service name (``*`` would be a wildcard DNS SAN that grpcio clients accept for every service). Clients that
are not browsers, py-consul among them, are served as before."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import consul
import pytest
import pytest_asyncio

from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Processes, processes

LEGACY_CREATE = {"SourceName": "evil", "DestinationName": "orders", "Action": "allow", "SourceType": "consul"}


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


@pytest.fixture(scope="module")
def agent(module_procs: Processes) -> Agent:
    """One dev agent for the module: each test writes names of its own."""
    return start_dev_agent(module_procs)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def intentions(agent: Agent) -> list[dict[str, object]]:
    found: list[dict[str, object]] = agent.get("/v1/connect/intentions")
    return found


async def test_a_cross_site_text_plain_post_creates_no_intention(agent: Agent, http: aiohttp.ClientSession) -> None:
    body = json.dumps(LEGACY_CREATE)
    headers = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    async with http.post(f"{agent.url}/v1/connect/intentions", data=body, headers=headers) as response:
        assert response.status == 403
        assert "origin 'http://evil.example'" in await response.text()
    assert [i for i in intentions(agent) if i["SourceName"] == "evil"] == []

    cross_site = {"Sec-Fetch-Site": "cross-site"}
    async with http.put(f"{agent.url}/v1/kv/planted", data=b"x", headers=cross_site) as response:
        assert response.status == 403
    assert agent.client().kv.get("planted")[1] is None


async def test_writes_from_its_own_origin_and_from_clients_that_are_not_browsers_are_served(
    agent: Agent, http: aiohttp.ClientSession
) -> None:
    params = {"source": "web", "destination": "orders"}
    own = {"Origin": agent.url}
    async with http.put(
        f"{agent.url}/v1/connect/intentions/exact", params=params, json={"Action": "deny"}, headers=own
    ) as response:
        assert response.status == 200, await response.text()
    assert agent.client().connect.intentions.upsert("api", "orders", action="allow")  # py-consul: no Origin
    assert {(i["SourceName"], i["Action"]) for i in intentions(agent)} >= {("web", "deny"), ("api", "allow")}


@pytest.mark.parametrize("host", ["rebind.evil.example", "rebind.evil.example:{port}", "10.1.2.3:{port}"])
async def test_a_request_whose_host_is_not_the_agents_gets_no_leaf(
    agent: Agent, http: aiohttp.ClientSession, host: str
) -> None:
    headers = {"Host": host.format(port=agent.port)}
    async with http.get(f"{agent.url}/v1/agent/connect/ca/leaf/web", headers=headers) as response:
        assert response.status == 403
        text = await response.text()
    assert "does not name this agent" in text
    assert "PRIVATE KEY" not in text


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "127.0.0.1"])
async def test_its_own_address_and_localhost_are_answered(agent: Agent, http: aiohttp.ClientSession, host: str) -> None:
    headers = {"Host": host.format(port=agent.port)}
    async with http.get(f"{agent.url}/v1/agent/connect/ca/leaf/web", headers=headers) as response:
        assert response.status == 200
        assert "PRIVATE KEY" in (await response.json())["PrivateKeyPEM"]


async def test_a_name_given_with_allow_host_is_answered(procs: Processes, http: aiohttp.ClientSession) -> None:
    agent = start_dev_agent(procs, "--allow-host", "consul.internal")
    for host, status in (("consul.internal:8500", 200), ("consul.internal.", 200), ("other.internal", 403)):
        async with http.get(f"{agent.url}/v1/status/leader", headers={"Host": host}) as response:
            assert response.status == status, host


@pytest.mark.parametrize("name", ["*", "web.svc", "-web", "web_1", "a" * 64])
async def test_no_leaf_is_issued_for_a_name_that_is_not_a_valid_service_name(
    agent: Agent, http: aiohttp.ClientSession, name: str
) -> None:
    async with http.get(f"{agent.url}/v1/agent/connect/ca/leaf/{name}") as response:
        assert response.status == 400
        assert "Invalid service name" in await response.text()
    with pytest.raises(consul.ConsulException, match="Invalid service name"):
        agent.client().agent.connect.ca.leaf(name)


async def test_a_leaf_for_a_valid_name_is_still_issued_through_py_consul(agent: Agent) -> None:
    issued = agent.client().agent.connect.ca.leaf("Web-2")
    assert issued["Service"] == "Web-2"
    assert issued["ServiceURI"].endswith("/svc/Web-2")
