"""Checks the agent runs itself, against real servers on loopback: a grpc.aio server with the standard
health service, a listening and a closed TCP port, an aiohttp server answering 200, 429 and 500; and
the reaper removing services left critical."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import consul
import consul.aio
import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.contract.conftest import Agent
from tests.support.processes import eventually, free_port, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def client(agent: Agent) -> AsyncIterator[consul.aio.Consul]:
    c = consul.aio.Consul(host=agent.host, port=agent.port)
    yield c
    await c.close()


async def check_state(client: consul.aio.Consul, check_id: str) -> tuple[str, str]:
    check = (await client.agent.checks())[check_id]
    return check["Status"], check["Output"]


async def becomes(client: consul.aio.Consul, check_id: str, status: str) -> str:
    """Wait for a run of the check to report `status` (checks start critical with no output); return the
    output it reported."""

    async def reached() -> bool:
        current, output = await check_state(client, check_id)
        return current == status and output != ""

    await eventually(reached, f"{check_id} to become {status}")
    return (await check_state(client, check_id))[1]


# ------------------------------------------------------------------------------------------ gRPC


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[health.aio.HealthServicer, int, grpc.aio.Server]]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, port, server
    await server.stop(None)


async def test_grpc_check_follows_the_servers_health_status(
    client: consul.aio.Consul,
    health_server: tuple[health.aio.HealthServicer, int, grpc.aio.Server],
    unique: Callable[[str], str],
) -> None:
    servicer, port, _ = health_server
    await servicer.set("shop.Orders", SERVING)
    name = unique("grpc")
    target = f"127.0.0.1:{port}/shop.Orders"
    await client.agent.service.register(name, port=port, check=consul.Check.grpc(target, "1s", timeout="2s"))
    try:
        assert await becomes(client, f"service:{name}", "passing") == f"gRPC check {target}: success"
        await servicer.set("shop.Orders", NOT_SERVING)
        output = await becomes(client, f"service:{name}", "critical")
        assert output == f"gRPC {target} serving status: NOT_SERVING"
    finally:
        await client.agent.service.deregister(name)


async def test_grpc_check_without_a_service_probes_the_whole_server(
    client: consul.aio.Consul,
    health_server: tuple[health.aio.HealthServicer, int, grpc.aio.Server],
    unique: Callable[[str], str],
) -> None:
    _, port, server = health_server
    name = unique("grpc-server")
    await client.agent.service.register(name, check=consul.Check.grpc(f"127.0.0.1:{port}", "1s"))
    try:
        await becomes(client, f"service:{name}", "passing")  # the servicer reports "" as SERVING
        await server.stop(None)
        output = await becomes(client, f"service:{name}", "critical")
        assert output.startswith("rpc error: code = Unavailable desc = ")
    finally:
        await client.agent.service.deregister(name)


async def test_steady_check_results_do_not_wake_watchers(
    client: consul.aio.Consul,
    health_server: tuple[health.aio.HealthServicer, int, grpc.aio.Server],
    unique: Callable[[str], str],
) -> None:
    """The check runs every second with the same result: the health index must stay put."""
    _, port, _ = health_server
    name = unique("steady")
    await client.agent.service.register(name, check=consul.Check.grpc(f"127.0.0.1:{port}", "1s"))
    try:
        await becomes(client, f"service:{name}", "passing")
        index, _ = await client.health.service(name)
        later, _ = await client.health.service(name, index=index, wait="2s")
        assert later == index
    finally:
        await client.agent.service.deregister(name)


# ------------------------------------------------------------------------------------------ TCP


async def test_tcp_check_passes_on_a_listening_port_and_fails_on_a_closed_one(
    client: consul.aio.Consul, unique: Callable[[str], str]
) -> None:
    listener = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    closed = free_port()
    name = unique("tcp")
    await client.agent.service.register(
        name,
        check=consul.Check.tcp("127.0.0.1", port, "1s"),
        extra_checks=[consul.Check.tcp("127.0.0.1", closed, "1s")],
    )
    try:
        assert await becomes(client, f"service:{name}:1", "passing") == f"TCP connect 127.0.0.1:{port}: Success"
        refused = await becomes(client, f"service:{name}:2", "critical")
        assert refused == f"dial tcp 127.0.0.1:{closed}: connect: connection refused"
    finally:
        await client.agent.service.deregister(name)
        listener.close()
        await listener.wait_closed()


# ------------------------------------------------------------------------------------------ HTTP


@pytest.fixture
async def http_server() -> AsyncIterator[int]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=429, text="slow down")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/busy", busy)
    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    yield server.sockets[0].getsockname()[1]
    await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "status", "line"),
    [
        ("ok", "passing", "200 OK Output: fine"),
        ("busy", "warning", "429 Too Many Requests Output: slow down"),
        ("broken", "critical", "500 Internal Server Error Output: boom"),
    ],
)
async def test_http_check_maps_the_response_code(
    client: consul.aio.Consul, http_server: int, unique: Callable[[str], str], path: str, status: str, line: str
) -> None:
    name = unique(f"http-{path}")
    url = f"http://127.0.0.1:{http_server}/{path}"
    await client.agent.service.register(name, check=consul.Check.http(url, "1s", timeout="2s"))
    try:
        assert await becomes(client, f"service:{name}", status) == f"HTTP GET {url}: {line}"
    finally:
        await client.agent.service.deregister(name)


# ------------------------------------------------------------------------------------------ reaping


def test_services_critical_past_deregister_after_are_reaped(
    dev_agent_factory: Callable[..., Agent], unique: Callable[[str], str]
) -> None:
    """Needs the dev agent's knobs: Consul reaps no sooner than a minute, checked every 30 s."""
    agent = dev_agent_factory("--reap-interval", "200ms", "--min-deregister-after", "0s")
    c = agent.client()
    doomed, kept = unique("doomed"), unique("kept")
    c.agent.service.register(doomed, check={"ttl": "60s", "DeregisterCriticalServiceAfter": "500ms"})
    c.agent.service.register(kept, check={"ttl": "60s", "DeregisterCriticalServiceAfter": "500ms"})
    c.agent.check.ttl_pass(f"service:{kept}")
    wait_until(lambda: doomed not in c.agent.services(), 10, "the critical service to be reaped")
    assert f"service:{doomed}" not in c.agent.checks()
    assert c.health.service(doomed)[1] == []
    assert kept in c.agent.services()
