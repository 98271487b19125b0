"""The sidecar's view of its app and its admin page, on loopback: AppHealth probing real grpc.aio apps and a bare
TCP listener, and Admin answering real HTTP requests from data handed in by plain functions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshlet.config import load_config
from meshlet.telemetry.metrics import TEXT_CONTENT_TYPE
from meshlet_sidecar.admin import Admin
from meshlet_sidecar.app_health import GRPC_PROBE, NOT_SERVING, SERVING, TCP_PROBE, AppHealth
from tests.support.processes import free_port

# ------------------------------------------------------------------------------------------ AppHealth


class App:
    """A plain grpc.aio server on loopback, with or without grpc.health.v1, that can be stopped and restarted."""

    def __init__(self, *, with_health: bool = True) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.health = health.aio.HealthServicer() if with_health else None
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server()
        if self.health is not None:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.server.add_insecure_port(self.address)
        await self.server.start()

    async def set(self, status: int) -> None:
        assert self.health is not None
        await self.health.set("", status)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


@pytest.fixture
async def apps() -> AsyncIterator[Callable[..., Awaitable[App]]]:
    started: list[App] = []

    async def start(*, with_health: bool = True) -> App:
        app = App(with_health=with_health)
        await app.start()
        started.append(app)
        return app

    yield start
    for app in started:
        await app.stop()


@pytest.fixture
async def probes() -> AsyncIterator[Callable[..., AppHealth]]:
    made: list[AppHealth] = []

    def make(address: str, **kwargs: float) -> AppHealth:
        made.append(AppHealth(address, **kwargs))
        return made[-1]

    yield make
    for probe in made:
        await probe.stop()


async def test_app_health_follows_the_apps_health_service_until_the_app_is_gone(
    apps: Callable[..., Awaitable[App]], probes: Callable[..., AppHealth]
) -> None:
    app = await apps()
    app_health = probes(app.address)

    await app_health.start()
    assert (app_health.status(), app_health.healthy, app_health.last_error) == (SERVING, True, None)
    assert app_health.probe_kind == GRPC_PROBE
    draining = [app_health.draining]  # while the app drains, a stopping sidecar keeps serving its calls out

    await app.set(health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await app_health.probe() == NOT_SERVING
    assert not app_health.healthy
    assert "answers NOT_SERVING" in (app_health.last_error or "")
    draining.append(app_health.draining)

    await app.stop()
    assert await app_health.probe() == NOT_SERVING
    assert "unreachable: Connection refused" in (app_health.last_error or "")
    draining.append(app_health.draining)
    assert draining == [False, True, False]  # only while it answers NOT_SERVING: once gone, it calls nothing
    assert app.address in repr(app_health)


async def test_app_without_a_health_service_is_healthy_while_its_port_accepts_connections(
    apps: Callable[..., Awaitable[App]], probes: Callable[..., AppHealth]
) -> None:
    app = await apps(with_health=False)
    app_health = probes(app.address)

    assert await app_health.probe() == SERVING
    assert app_health.probe_kind == TCP_PROBE
    assert "TCP connect accepted" in app_health.describe()

    await app.stop()
    assert await app_health.probe() == NOT_SERVING
    assert "unreachable" in (app_health.last_error or "")
    assert app_health.describe() == app_health.last_error


async def test_app_restarted_with_a_health_service_is_judged_by_it_again(
    apps: Callable[..., Awaitable[App]], probes: Callable[..., AppHealth]
) -> None:
    bare = await apps(with_health=False)
    app_health = probes(bare.address)
    assert await app_health.probe() == SERVING
    await bare.stop()
    assert await app_health.probe() == NOT_SERVING

    restarted = App()
    restarted.port, restarted.address = bare.port, bare.address
    await restarted.start()
    try:
        await restarted.set(health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await app_health.probe() == NOT_SERVING
        assert app_health.probe_kind == GRPC_PROBE
    finally:
        await restarted.stop()


async def test_bare_tcp_listener_that_never_speaks_grpc_is_not_serving_and_says_why(
    probes: Callable[..., AppHealth],
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accept, never answer

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        app_health = probes(f"127.0.0.1:{port}", timeout_s=0.3)
        assert await app_health.probe() == NOT_SERVING
        assert "accepts connections but did not answer grpc.health.v1" in (app_health.last_error or "")
    finally:
        listener.close()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
        await listener.wait_closed()


async def test_wait_healthy_returns_once_an_app_started_after_the_sidecar_serves(
    probes: Callable[..., AppHealth],
) -> None:
    app = App()
    app_health = probes(app.address, interval_s=0.05)
    await app_health.start()
    assert app_health.status() == NOT_SERVING
    assert not await app_health.wait_healthy(0.01)

    await app.start()
    try:
        assert await app_health.wait_healthy(10.0)
        assert app_health.status() == SERVING
    finally:
        await app.stop()


# ------------------------------------------------------------------------------------------ Admin


class SidecarState:
    """What a sidecar would hand Admin, as plain data that the test changes."""

    def __init__(self) -> None:
        self.waiting_for = ["certificates", "discovery of inventory", "app health"]
        self.clusters: list[dict[str, Any]] = [
            {
                "summary": "<Upstream inventory: 1 endpoints, 1 admitted | breakers: 1 closed | in flight: 0>",
                "name": "inventory",
                "endpoints": [{"address": "10.0.0.7:50051", "weight": 1, "in_flight": 0, "breaker": "closed"}],
                "panic": False,
                "in_flight": 0,
                "budget": "<RetryBudget>",
            }
        ]
        self.config: dict[str, Any] = {"service": {"name": "orders"}}

    def ready(self) -> tuple[bool, list[str]]:
        return not self.waiting_for, list(self.waiting_for)

    def describe(self) -> list[dict[str, Any]]:
        return self.clusters

    def effective_config(self) -> dict[str, Any]:
        return self.config

    def metrics(self, accept: str | None) -> tuple[bytes, str]:
        return b"# TYPE meshlet_sidecar_ready gauge\nmeshlet_sidecar_ready 1.0\n", TEXT_CONTENT_TYPE


def no_metrics(accept: str | None) -> tuple[bytes, str]:
    return b"", TEXT_CONTENT_TYPE


@pytest.fixture
async def admin() -> AsyncIterator[tuple[str, SidecarState]]:
    state = SidecarState()
    server = Admin(
        "127.0.0.1:0",
        ready=state.ready,
        clusters=state.describe,
        config=state.effective_config,
        metrics=state.metrics,
    )
    port = await server.start()
    yield f"http://127.0.0.1:{port}", state
    await server.stop()


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def test_ready_is_503_naming_what_is_missing_until_everything_is_ready(
    admin: tuple[str, SidecarState],
) -> None:
    base, state = admin
    assert (await get(f"{base}/ready"))[::2] == (503, "waiting for: certificates, discovery of inventory, app health\n")

    state.waiting_for.remove("certificates")
    assert (await get(f"{base}/ready"))[::2] == (503, "waiting for: discovery of inventory, app health\n")

    state.waiting_for.clear()
    assert (await get(f"{base}/ready"))[::2] == (200, "ready\n")


async def test_live_answers_while_the_event_loop_runs(admin: tuple[str, SidecarState]) -> None:
    base, _ = admin
    assert (await get(f"{base}/live"))[0] == 200


async def test_clusters_lists_upstreams_and_endpoints_as_text_or_json(admin: tuple[str, SidecarState]) -> None:
    base, state = admin

    status, _, text = await get(f"{base}/clusters")
    assert status == 200
    assert text.splitlines() == [
        state.clusters[0]["summary"],
        "  10.0.0.7:50051  weight=1  breaker=closed  in_flight=0",
    ]

    status, content_type, body = await get(f"{base}/clusters?format=json")
    assert (status, content_type) == (200, "application/json; charset=utf-8")
    assert json.loads(body) == state.clusters

    assert (await get(f"{base}/clusters?format=yaml"))[0] == 400


async def test_config_shows_the_effective_config_without_token_or_key_path(tmp_path: Path) -> None:
    key_path = tmp_path / "very-secret-orders.key"
    for file in (key_path, tmp_path / "orders.crt", tmp_path / "ca.crt"):
        file.write_text("PEM")  # read only when a listener needs them
    (tmp_path / "meshlet.yaml").write_text(
        f"service: {{name: orders}}\n"
        f"tls: {{source: files, cert: {tmp_path}/orders.crt, key: {key_path}, ca: {tmp_path}/ca.crt}}\n"
    )
    config = load_config(tmp_path / "meshlet.yaml", env={"CONSUL_HTTP_TOKEN": "s3cr3t-token-value"})
    server = Admin("127.0.0.1:0", ready=lambda: (True, []), clusters=list, config=config.redacted, metrics=no_metrics)
    port = await server.start()
    try:
        status, content_type, body = await get(f"http://127.0.0.1:{port}/config")
    finally:
        await server.stop()

    assert (status, content_type) == (200, "application/json; charset=utf-8")
    assert "s3cr3t-token-value" not in body
    assert "very-secret-orders.key" not in body
    shown = json.loads(body)
    assert shown["service"]["name"] == "orders"
    assert shown["tls"]["cert"] == f"{tmp_path}/orders.crt"


async def test_metrics_serves_the_registry_text_as_prometheus_0_0_4(admin: tuple[str, SidecarState]) -> None:
    base, _ = admin

    status, content_type, text = await get(f"{base}/metrics")

    assert (status, content_type) == (200, TEXT_CONTENT_TYPE)
    assert text == "# TYPE meshlet_sidecar_ready gauge\nmeshlet_sidecar_ready 1.0\n"


async def test_unknown_path_is_404_with_a_hint_listing_the_endpoints(admin: tuple[str, SidecarState]) -> None:
    base, _ = admin

    status, _, text = await get(f"{base}/stats")

    assert status == 404
    assert text.count("\n") == 1
    assert all(path in text for path in ("/ready", "/live", "/clusters", "/config", "/metrics"))


async def test_admin_stops_listening_when_stopped() -> None:
    server = Admin("127.0.0.1:0", ready=lambda: (True, []), clusters=list, config=dict, metrics=no_metrics)
    port = await server.start()
    assert "serving" in repr(server)
    await server.stop()

    with pytest.raises(aiohttp.ClientConnectionError):
        await get(f"http://127.0.0.1:{port}/live")
    assert "stopped" in repr(server)
