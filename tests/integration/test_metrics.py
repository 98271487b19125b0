"""Metrics as Prometheus scrapes them: over HTTP from the SDK's metrics port and from a sidecar's admin port,
parsed with prometheus_client's own parser, and matching the calls the test made."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from meshlet.config import load_config
from meshlet.errors import CannotListen
from meshlet.mesh import Mesh
from meshlet.security.dev_ca import init_ca, issue
from meshlet.telemetry.metrics import Metrics
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.conftest import EchoFleet, MeshFactory
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Processes, eventually, free_port, wait_until
from tests.support.sidecars import start_plain_app, start_sidecar, tls_files

pytestmark = pytest.mark.slow

HELLO = echo_pb2.EchoRequest(message="hello")
ECHO_SERVICE = "meshlet_api.echo.v1.Echo"
ECHO = f"{ECHO_SERVICE}/Echo"
ECHO_ONCE = f"{ECHO_SERVICE}/EchoOnce"
TRUST_DOMAIN = "meshlet.test"


class Scrape:
    """One scrape of a /metrics page: every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in self.families.values()
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series does not exist."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def matching(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for (found, have), value in self.samples.items() if found == name and wanted <= have)


async def scrape(url: str) -> Scrape:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return Scrape(await response.text())


async def probe(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_the_sdk_metrics_port_counts_calls_retries_and_the_open_breaker(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    fleet.start("good-1")
    fleet.start("good-2")
    fleet.start("bad", "--fail-code", "UNAVAILABLE")
    port = free_port()
    mesh = mesh_factory(**{"telemetry.metrics_port": port, "telemetry.metrics_host": "127.0.0.1"})
    await mesh.start()
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
    url = f"http://127.0.0.1:{port}/metrics"
    # Readiness follows the process's grpc.health.v1 status, which a draining mesh turns NOT_SERVING.
    ready = f"http://127.0.0.1:{port}/ready"
    assert await probe(ready) == (200, "grpc.health.v1 status: SERVING\n")
    await mesh.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await probe(ready) == (503, "grpc.health.v1 status: NOT_SERVING\n")

    for _ in range(40):
        await stub.Echo(HELLO, timeout=5)  # the bad instance's failures are retried on the good ones
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Echo(HELLO, timeout=5, metadata=(("x-echo-fail", "NOT_FOUND"),))
        assert failed.value.code() is grpc.StatusCode.NOT_FOUND

    seen = await scrape(url)
    out = {"direction": "outbound", "service": fleet.service}
    assert seen("meshlet_requests_total", **out, method=ECHO, code="OK") == 40
    assert seen("meshlet_requests_total", **out, method=ECHO, code="NOT_FOUND") == 3
    assert seen("meshlet_request_duration_seconds_count", **out, method=ECHO) == 43
    failed_attempts = seen("meshlet_attempts_total", service=fleet.service, method=ECHO, code="UNAVAILABLE")
    assert failed_attempts >= 5  # the bad instance's breaker opens after five
    assert seen("meshlet_retries_total", service=fleet.service, method=ECHO) == failed_attempts
    assert seen("meshlet_attempts_total", service=fleet.service, method=ECHO, code="OK") == 40
    bad = f"127.0.0.1:{fleet.ports['bad']}"
    assert seen("meshlet_breaker_state", service=fleet.service, endpoint=bad) == 2
    assert seen("meshlet_breaker_transitions_total", service=fleet.service, endpoint=bad, state="open") >= 1
    assert seen("meshlet_endpoints", service=fleet.service, state="ejected") == 1
    assert seen("meshlet_endpoints", service=fleet.service, state="healthy") == 2
    assert seen("meshlet_in_flight", **out) == 0
    assert seen.families["meshlet_request_duration_seconds"].type == "histogram"

    await mesh.close()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


async def test_a_breaker_opening_stays_counted_after_its_endpoint_leaves_consul(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    """The endpoint whose breaker opened leaves Consul right after: its per-endpoint series go, the upstream's
    total of openings stays (a counter never goes backwards), and it was there at 0 before the first opening."""
    for name in ("good-1", "good-2"):
        fleet.start(name)
    bad = fleet.start("bad", "--fail-code", "UNAVAILABLE")
    port = free_port()
    slow_reset = {"failures": 2, "reset_timeout": "120s", "reset_timeout_max": "120s"}  # one opening, no half-open
    mesh = mesh_factory(
        **{"telemetry.metrics_port": port, "telemetry.metrics_host": "127.0.0.1"},
        upstreams={fleet.service: {"breaker": slow_reset}},
    )
    await mesh.start()
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
    url = f"http://127.0.0.1:{port}/metrics"
    bad_endpoint = f"127.0.0.1:{fleet.ports['bad']}"

    before = await scrape(url)
    assert ("meshlet_breaker_openings_total", frozenset({("service", fleet.service)})) in before.samples
    assert before("meshlet_breaker_openings_total", service=fleet.service) == 0  # increase() sees the first

    async def bad_is_open() -> bool:
        await stub.Echo(HELLO, timeout=5)  # the bad instance's failures are retried on the good ones
        return (await scrape(url))("meshlet_breaker_state", service=fleet.service, endpoint=bad_endpoint) == 2

    await eventually(bad_is_open, "the bad instance's breaker to open")
    bad.stop()  # it leaves Consul: its check fails, the mesh's discovery drops it

    async def bad_is_gone() -> bool:
        seen = await scrape(url)
        return seen.matching("meshlet_breaker_transitions_total", endpoint=bad_endpoint) == 0 and (
            seen.matching("meshlet_endpoints", service=fleet.service) == 2
        )

    await eventually(bad_is_gone, "the departed endpoint's series to go")
    after = await scrape(url)
    assert after("meshlet_breaker_openings_total", service=fleet.service) == 1
    assert after("meshlet_retry_budget_refusals_total", service=fleet.service) == 0


async def test_an_sdk_server_keeps_the_meshs_reflection_questions_out_of_its_metrics_and_traces(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    """A sidecar asks an SDK service's reflection service (mesh.server() serves one) with the mesh's mark, then
    the app makes 2 calls: the SDK process counts 2 calls and exports the spans of 2."""
    from meshlet_sidecar.reflection import ask_methods
    from tests.support.otlp_receiver import otlp_receiver

    port, calls = free_port(), 2
    async with otlp_receiver() as receiver:
        fleet.start(
            "sdk-server",
            env={
                "MESHLET_TELEMETRY__METRICS_PORT": str(port),
                "MESHLET_TELEMETRY__METRICS_HOST": "127.0.0.1",
                "MESHLET_TELEMETRY__OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        mesh = mesh_factory()
        await mesh.start()
        learnt = await ask_methods(mesh.own_channel(fleet.service))  # what a sidecar's reflection learner does
        assert f"/{ECHO}" in learnt
        stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
        for _ in range(calls):
            await stub.Echo(HELLO, timeout=5)
        await eventually(lambda: len(receiver.spans) >= calls, "the server's spans")
        seen = await scrape(f"http://127.0.0.1:{port}/metrics")
        spans = list(receiver.spans)

    assert seen.matching("meshlet_requests_total", direction="inbound") == calls
    assert seen("meshlet_requests_total", direction="inbound", service=fleet.service, method=ECHO, code="OK") == calls
    assert [(s.name, s.kind) for s in spans] == [(ECHO, "SERVER")] * calls


async def test_a_served_sdk_process_counts_its_inbound_calls_by_the_status_its_handler_ended_them_with(
    fleet: EchoFleet, mesh_factory: MeshFactory
) -> None:
    port = free_port()
    fleet.start(
        "server", env={"MESHLET_TELEMETRY__METRICS_PORT": str(port), "MESHLET_TELEMETRY__METRICS_HOST": "127.0.0.1"}
    )
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))

    for _ in range(5):
        await stub.Echo(HELLO, timeout=5)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.EchoOnce(HELLO, timeout=5, metadata=(("x-echo-fail", "NOT_FOUND"),))
    for _ in range(3):
        assert len([reply async for reply in stub.ServerStream(HELLO, timeout=5)]) == 3

    # The same plaintext port answers Kubernetes' probes: the mesh's port is mTLS only.
    assert await probe(f"http://127.0.0.1:{port}/ready") == (200, "grpc.health.v1 status: SERVING\n")
    assert await probe(f"http://127.0.0.1:{port}/live") == (200, "live\n")

    inbound = {"direction": "inbound", "service": fleet.service}
    url = f"http://127.0.0.1:{port}/metrics"
    seen = await scrape(url)
    for _ in range(100):  # a stream is counted when grpc reports its call done, a moment after the client's end
        if (
            seen(
                "meshlet_requests_total",
                **inbound,
                caller="(unidentified)",
                method=f"{ECHO_SERVICE}/ServerStream",
                code="OK",
            )
            == 3
        ):
            break
        await asyncio.sleep(0.05)
        seen = await scrape(url)
    assert seen("meshlet_requests_total", **inbound, caller="(unidentified)", method=ECHO, code="OK") == 5
    assert seen("meshlet_requests_total", **inbound, caller="(unidentified)", method=ECHO_ONCE, code="NOT_FOUND") == 2
    assert (
        seen(
            "meshlet_requests_total",
            **inbound,
            caller="(unidentified)",
            method=f"{ECHO_SERVICE}/ServerStream",
            code="OK",
        )
        == 3
    )
    assert seen("meshlet_in_flight", **inbound) == 0


async def test_sidecar_admin_metrics_count_denials_and_rate_limits_by_caller(procs: Processes, tmp_path: Path) -> None:
    agent: Agent = start_dev_agent(procs)
    init_ca(tmp_path, trust_domain=TRUST_DOMAIN)
    issue(tmp_path, "vault")
    issue(tmp_path, "web")
    app = start_plain_app(procs, "vault-app", with_reflection=True)  # methods known: refused ones keep their names
    common = {"consul": {"address": agent.url}, "service": {"check_ttl": "2s", "drain_grace": "1s"}}
    reflection = ["/grpc.reflection.v1alpha.ServerReflection/*", "/grpc.reflection.v1.ServerReflection/*"]
    vault = start_sidecar(
        procs,
        tmp_path,
        "vault",
        {**common, "service": {**common["service"], "name": "vault"}, "tls": tls_files(tmp_path, "vault"),
         "authz": {"default": "deny", "rules": [
             {"from": "web", "to": "vault", "methods": [f"/{ECHO}", *reflection], "action": "allow"}]},
         "rate_limit": {"per_method": {f"/{ECHO}": {"rate_per_s": 0.001, "burst": 3}}},
         "telemetry": {"access_log": True}},
        app=app.address,
    )  # fmt: skip
    wait_until(lambda: bool(agent.passing("vault")), 30, "vault's sidecar to register and pass its check")
    wait_until(lambda: "methods of the app at" in vault.output(), 30, "vault's sidecar to learn its app's methods")
    web = start_sidecar(
        procs,
        tmp_path,
        "web",
        {**common, "service": {**common["service"], "name": "web"}, "tls": tls_files(tmp_path, "web"),
         "sidecar": {"routes": {ECHO_SERVICE: "vault"}}, "upstreams": {"vault": {}}},
    )  # fmt: skip

    codes: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{web.outbound_port}") as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for call in [stub.Echo] * 5 + [stub.EchoOnce] * 2:
            try:
                await call(HELLO, timeout=5)
                codes.append("OK")
            except grpc.aio.AioRpcError as error:
                codes.append(error.code().name)
    assert codes == ["OK"] * 3 + ["RESOURCE_EXHAUSTED"] * 2 + ["PERMISSION_DENIED"] * 2

    far = await scrape(f"{vault.admin_url}/metrics")
    inbound = {"direction": "inbound", "service": "vault"}
    assert far("meshlet_authz_denials_total", service="vault", caller="web") == 2
    assert far("meshlet_rate_limited_total", service="vault", caller="web") == 2
    assert far("meshlet_requests_total", **inbound, caller="web", method=ECHO, code="OK") == 3
    assert far("meshlet_requests_total", **inbound, caller="web", method=ECHO, code="RESOURCE_EXHAUSTED") == 2
    assert far("meshlet_requests_total", **inbound, caller="web", method=ECHO_ONCE, code="PERMISSION_DENIED") == 2
    assert far("meshlet_sidecar_ready") == 1
    assert far("meshlet_in_flight", **inbound) == 0

    access = [json.loads(line) for line in vault.output().splitlines() if '"logger": "meshlet.access"' in line]
    lines = [(line["method"], line["code"], line["peer"]) for line in access if line["method"] in (ECHO, ECHO_ONCE)]
    web_id = f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web"
    assert sorted(lines) == sorted(
        [(ECHO, "OK", web_id)] * 3
        + [(ECHO, "RESOURCE_EXHAUSTED", web_id)] * 2
        + [(ECHO_ONCE, "PERMISSION_DENIED", web_id)] * 2
    )  # one access log line per call, in the sidecar's own log

    near = await scrape(f"{web.admin_url}/metrics")
    outbound = {"direction": "outbound", "service": "vault"}
    assert near("meshlet_requests_total", **outbound, method=ECHO, code="OK") == 3
    assert near("meshlet_requests_total", **outbound, method=ECHO, code="RESOURCE_EXHAUSTED") == 2
    assert near("meshlet_requests_total", **outbound, method=ECHO_ONCE, code="PERMISSION_DENIED") == 2
    assert near.matching("meshlet_attempts_total", service="vault", method=ECHO) == 5  # no refusal was re-sent
    assert near("meshlet_endpoints", service="vault", state="healthy") == 1
    assert near("meshlet_tls_handshake_failures_total", direction="outbound", service="vault") == 0


class BrokenStream(echo_pb2_grpc.EchoServicer):
    async def ServerStream(self, request: echo_pb2.EchoRequest, context: Any) -> AsyncIterator[echo_pb2.EchoReply]:  # noqa: N802
        yield echo_pb2.EchoReply(message="one")
        raise RuntimeError("a bug in the servicer")


async def test_a_response_stream_that_raises_is_counted_unknown_as_its_caller_sees_it() -> None:
    config = load_config(None, env={}, overrides={"service.name": "echo", "tls.source": "off"})
    mesh = Mesh(config, metrics=Metrics())
    server = mesh.server()
    echo_pb2_grpc.add_EchoServicer_to_server(BrokenStream(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async for _ in echo_pb2_grpc.EchoStub(channel).ServerStream(HELLO, timeout=5):
                    pass
        assert failed.value.code() == grpc.StatusCode.UNKNOWN
        assert mesh.metrics is not None
        method = f"{ECHO_SERVICE}/ServerStream"
        inbound = {"direction": "inbound", "service": "echo", "method": method}
        for _ in range(100):  # counted when grpc reports the call done, a moment after the client saw its end
            seen = Scrape(mesh.metrics.render().decode())
            if seen.matching("meshlet_requests_total", **inbound):
                break
            await asyncio.sleep(0.05)
        assert seen("meshlet_requests_total", **inbound, caller="(unidentified)", code="UNKNOWN") == 1
        assert seen("meshlet_requests_total", **inbound, caller="(unidentified)", code="OK") == 0
    finally:
        await server.stop(None)
        await mesh.close()


class Hanging(echo_pb2_grpc.EchoServicer):
    """Answers nothing: each call ends when its caller cancels it or its deadline passes."""

    def __init__(self) -> None:
        self.serving: asyncio.Queue[str] = asyncio.Queue()

    async def Echo(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoReply:  # noqa: N802
        await self.serving.put("Echo")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def ServerStream(self, request: echo_pb2.EchoRequest, context: Any) -> AsyncIterator[echo_pb2.EchoReply]:  # noqa: N802
        await self.serving.put("ServerStream")
        await asyncio.Event().wait()
        yield echo_pb2.EchoReply()


async def test_an_sdk_server_counts_cancelled_and_timed_out_calls_as_their_callers_saw_them() -> None:
    config = load_config(None, env={}, overrides={"service.name": "echo", "tls.source": "off"})
    mesh = Mesh(config, metrics=Metrics())
    server = mesh.server()
    servicer = Hanging()
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as late:
                    await stub.Echo(HELLO, timeout=0.3)
                assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            for make_call in (stub.Echo, stub.ServerStream):
                servicer.serving = asyncio.Queue()  # not the calls that timed out
                call = make_call(HELLO, timeout=30)
                await servicer.serving.get()
                call.cancel()
        assert mesh.metrics is not None
        inbound = {"direction": "inbound", "service": "echo"}
        echo, stream = f"{ECHO_SERVICE}/Echo", f"{ECHO_SERVICE}/ServerStream"
        expected = {(echo, "DEADLINE_EXCEEDED"): 2, (echo, "CANCELLED"): 1, (stream, "CANCELLED"): 1}
        for _ in range(100):  # counted when grpc reports the call done, a moment after the client saw its end
            seen = Scrape(mesh.metrics.render().decode())
            if seen.matching("meshlet_requests_total", **inbound) >= sum(expected.values()):
                break
            await asyncio.sleep(0.05)
        counted = {
            (method, code): seen("meshlet_requests_total", **inbound, caller="(unidentified)", method=method, code=code)
            for method in (echo, stream)
            for code in ("OK", "CANCELLED", "DEADLINE_EXCEEDED")
        }
        assert {key: count for key, count in counted.items() if count} == expected
    finally:
        await server.stop(None)
        await mesh.close()


async def test_a_taken_metrics_port_ends_the_start_with_one_line_naming_it() -> None:
    """CannotListen is a SystemExit: a service whose metrics port another process holds exits 1 with this line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        mesh = Mesh(load_config(None, env={}, overrides={"telemetry.metrics_port": port}))
        try:
            with pytest.raises(CannotListen) as refused:
                await mesh.start()
        finally:
            await mesh.close()
    assert f"127.0.0.1:{port} (Address already in use" in str(refused.value)
    assert "telemetry.metrics_port" in str(refused.value)
