"""The mesh's own numbers against calls the test made itself, through real processes (a dev agent, two sidecars,
a plain app): each kind of call a known number of times (OK, app errors, cancelled, refused by the mesh for
each reason it can be made to give), then the scraped /metrics of both sidecars and of the agent, and every line
of the sidecars' logs, must say exactly that.

    this test -> web's outbound sidecar ==mTLS==> vault's sidecar -> vault's plain app
              -> web's "ghost" port (an upstream with no instance)
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from meshlet.security.dev_ca import init_ca, issue
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.conftest import EchoFleet, MeshFactory
from tests.integration.test_metrics import ECHO, ECHO_ONCE, ECHO_SERVICE, TRUST_DOMAIN, Scrape
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Processes, eventually, free_port
from tests.support.sidecars import SidecarProcess, start_plain_app, start_sidecar, tls_files

pytestmark = pytest.mark.slow

HELLO = echo_pb2.EchoRequest(message="hello")
SERVER_STREAM = f"{ECHO_SERVICE}/ServerStream"
CLIENT_STREAM = f"{ECHO_SERVICE}/ClientStream"
BIDI_STREAM = f"{ECHO_SERVICE}/BidiStream"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
WAIT_S = 30.0  # a bound on waiting for what must happen, never a timing assertion
OUTBOUND_REASONS = (
    "NO_HEALTHY_ENDPOINT", "BREAKER_OPEN", "BUDGET_EXHAUSTED", "DEADLINE_TOO_SHORT", "BULKHEAD_FULL", "CHANNEL_CLOSED",
)  # fmt: skip
INBOUND_REASONS = ("UNAUTHENTICATED", "INTENTION_DENIED", "RATE_LIMITED")


async def get(url: str, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return response.headers["Content-Type"], await response.text()


async def scrape(url: str) -> Scrape:
    content_type, text = await get(url)
    assert content_type.startswith("text/plain; version=0.0.4")
    return Scrape(text)


async def code_of(call: Any) -> str:
    """The status a call ended with, as its caller saw it; a stream is read to its end."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)
    except asyncio.CancelledError:  # a call this test cancelled
        return "CANCELLED"
    return "OK"


def json_lines(sidecar: SidecarProcess) -> list[dict[str, Any]]:
    """Every line of a sidecar's log, each of which must be one JSON object."""
    lines = sidecar.output().splitlines()
    not_json = [line for line in lines if not _is_json_object(line)]
    assert not not_json, f"sidecar {sidecar.name} wrote lines that are not JSON:\n" + "\n".join(not_json)
    return [json.loads(line) for line in lines]


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def access_lines(lines: list[dict[str, Any]], methods: tuple[str, ...]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("logger") == "meshlet.access" and line["method"] in methods]


async def test_metrics_and_logs_count_each_kind_of_call_the_mesh_saw(procs: Processes, tmp_path: Path) -> None:
    agent: Agent = start_dev_agent(procs)
    init_ca(tmp_path, trust_domain=TRUST_DOMAIN)
    issue(tmp_path, "vault")
    issue(tmp_path, "web")
    app = start_plain_app(procs, "vault-app", with_reflection=True)
    common = {"consul": {"address": agent.url}, "service": {"check_ttl": "2s", "drain_grace": "1s"}}
    reflection = ["/grpc.reflection.v1alpha.ServerReflection/*", "/grpc.reflection.v1.ServerReflection/*"]
    allowed = [f"/{ECHO}", f"/{ECHO_ONCE}", f"/{SERVER_STREAM}", f"/{BIDI_STREAM}", *reflection]  # not ClientStream
    vault = start_sidecar(
        procs,
        tmp_path,
        "vault",
        {**common, "service": {**common["service"], "name": "vault"}, "tls": tls_files(tmp_path, "vault"),
         "authz": {"default": "deny", "rules": [{"from": "web", "to": "vault", "methods": allowed, "action": "allow"}]},
         "rate_limit": {"per_method": {f"/{ECHO}": {"rate_per_s": 0.001, "burst": 3}}},
         "telemetry": {"access_log": True, "span_file": str(tmp_path / "vault-spans.jsonl")}},
        app=app.address,
    )  # fmt: skip
    await eventually(lambda: bool(agent.passing("vault")), "vault's sidecar to pass its check", WAIT_S, blocking=True)
    ghost_port = free_port()
    web = start_sidecar(
        procs,
        tmp_path,
        "web",
        {**common, "service": {**common["service"], "name": "web"}, "tls": tls_files(tmp_path, "web"),
         "sidecar": {"routes": {ECHO_SERVICE: "vault"}},
         "upstreams": {"vault": {"max_in_flight": 2}, "ghost": {"local_port": ghost_port}},
         "telemetry": {"access_log": True, "span_file": str(tmp_path / "web-spans.jsonl")}},
    )  # fmt: skip

    codes: dict[tuple[str, str], int] = {}

    def saw(method: str, code: str) -> None:
        codes[(method, code)] = codes.get((method, code), 0) + 1

    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{web.outbound_port}") as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{ghost_port}") as ghost_channel,
    ):
        stub = echo_pb2_grpc.EchoStub(channel)
        # First an OK call: web asks vault's app what its methods are (reflection) beside its first call, and
        # that probe, the mesh's own, must be over (in the bulkhead's second slot) before the slots are taken.
        saw(ECHO_ONCE, await code_of(stub.EchoOnce(HELLO, timeout=5)))
        web_metrics = f"{web.admin_url}/metrics"

        async def probed() -> bool:
            seen = await scrape(web_metrics)
            asked = seen.matching("meshlet_requests_total", direction="outbound", service="vault", method=REFLECTION)
            return asked > 0 and seen("meshlet_in_flight", direction="outbound", service="vault") == 0

        await eventually(probed, "web to learn vault's methods by reflection", WAIT_S)
        # The bulkhead: two calls hold vault's two slots, two more are refused by web, never sent.
        held = [stub.EchoOnce(HELLO, timeout=WAIT_S, metadata=(("x-echo-hang", "1"),)) for _ in range(2)]

        async def holding() -> bool:
            return (await scrape(web_metrics))("meshlet_in_flight", direction="outbound", service="vault") == 2

        for _ in range(2):
            await eventually(holding, "the held calls to be in flight", WAIT_S)
            saw(ECHO, await code_of(stub.Echo(HELLO, timeout=5)))
        assert (await scrape(web_metrics))("meshlet_bulkhead_limit", service="vault") == 2
        for call in held:
            call.cancel()
            saw(ECHO_ONCE, await code_of(call))
        for _ in range(3):  # within vault's rate limit (a burst of 3)
            saw(ECHO, await code_of(stub.Echo(HELLO, timeout=5)))
        for _ in range(2):  # over it
            saw(ECHO, await code_of(stub.Echo(HELLO, timeout=5)))
        for _ in range(2):  # the app's own error
            saw(ECHO_ONCE, await code_of(stub.EchoOnce(HELLO, timeout=5, metadata=(("x-echo-fail", "NOT_FOUND"),))))
        for _ in range(2):  # a stream, to its end
            saw(SERVER_STREAM, await code_of(stub.ServerStream(HELLO, timeout=5)))
        for _ in range(2):  # no intention allows it
            saw(CLIENT_STREAM, await code_of(stub.ClientStream(iter([HELLO, HELLO]), timeout=5)))
        for _ in range(2):  # an upstream with no instance
            saw(ECHO, await code_of(echo_pb2_grpc.EchoStub(ghost_channel).Echo(HELLO, timeout=5)))

    assert codes == {
        (ECHO, "RESOURCE_EXHAUSTED"): 4,  # 2 by web's bulkhead, 2 by vault's rate limit
        (ECHO_ONCE, "CANCELLED"): 2,
        (ECHO_ONCE, "OK"): 1,
        (ECHO, "OK"): 3,
        (ECHO_ONCE, "NOT_FOUND"): 2,
        (SERVER_STREAM, "OK"): 2,
        (CLIENT_STREAM, "PERMISSION_DENIED"): 2,
        (ECHO, "UNAVAILABLE"): 2,  # the ghost
    }
    to_vault = {k: v for k, v in codes.items() if k != (ECHO, "UNAVAILABLE")}
    to_vault[(ECHO, "RESOURCE_EXHAUSTED")] = 2  # the bulkhead's two never left web

    # ------------------------------------------------------------------ web: the calling side
    near = await scrape(f"{web.admin_url}/metrics")

    def outbound(service: str) -> dict[tuple[str, str], float]:
        return _requests(near, direction="outbound", service=service)

    assert outbound("vault") == {**to_vault, (ECHO, "RESOURCE_EXHAUSTED"): 4}
    assert outbound("ghost") == {(ECHO, "UNAVAILABLE"): 2}
    refusals = {"BULKHEAD_FULL": 2}
    for reason in OUTBOUND_REASONS:
        assert near("meshlet_refusals_total", direction="outbound", service="vault", reason=reason) == refusals.get(
            reason, 0
        ), reason
    # web's reflection probes of ghost are refused too: the mesh's own calls, counted apart from the test's
    probes = near.matching("meshlet_requests_total", direction="outbound", service="ghost", method=REFLECTION)
    assert near("meshlet_refusals_total", direction="outbound", service="ghost", reason="NO_HEALTHY_ENDPOINT") == (
        2 + probes
    )
    assert near("meshlet_in_flight", direction="outbound", service="vault") == 0
    assert near("meshlet_bulkhead_limit", service="vault") == 2
    # No retry was made: the budget holds its floor, budget_min_per_s (10) x budget_ttl (10 s), and more.
    assert near("meshlet_retry_budget_remaining", service="vault") >= 100
    _assert_process_basics(near)

    # OpenMetrics when the scraper asks for it: a sampled call's trace id on its latency bucket.
    content_type, text = await get(f"{web.admin_url}/metrics", "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    exemplars = {
        sample.exemplar.labels["trace_id"]
        for family in openmetrics_families(text)  # type: ignore[no-untyped-call]
        if family.name == "meshlet_request_duration_seconds"
        for sample in family.samples
        if sample.exemplar is not None
        and sample.labels.get("direction") == "outbound"
        and sample.labels["method"].startswith(ECHO_SERVICE)
    }
    assert exemplars, "no exemplar on the outbound latency histogram"

    # ------------------------------------------------------------------ vault: the called side
    far = await scrape(f"{vault.admin_url}/metrics")
    await eventually(
        lambda: _inbound_done(vault, sum(to_vault.values())), "vault to count every call", WAIT_S, blocking=True
    )
    far = await scrape(f"{vault.admin_url}/metrics")
    assert _requests(far, direction="inbound", service="vault", caller="web") == to_vault
    inbound_refusals = {"RATE_LIMITED": 2, "INTENTION_DENIED": 2}
    for reason in INBOUND_REASONS:
        assert far("meshlet_refusals_total", direction="inbound", service="vault", reason=reason) == (
            inbound_refusals.get(reason, 0)
        ), reason
    _assert_process_basics(far)

    # ------------------------------------------------------------------ the dev agent's own page
    agent_page = Scrape((await get(f"{agent.url}/metrics"))[1])
    assert agent_page("meshlet_devagent_blocking_queries") >= 1  # web's watch of vault, at least
    assert agent_page.matching("meshlet_devagent_http_requests_total", route="/v1/agent/service/register") >= 1
    before = agent_page.matching("meshlet_devagent_http_requests_total", route="(unmatched)", code="404")
    for _ in range(3):
        async with aiohttp.ClientSession() as session, session.get(f"{agent.url}/v1/no-such-thing") as response:
            assert response.status == 404
    agent_page = Scrape((await get(f"{agent.url}/metrics"))[1])
    assert agent_page.matching("meshlet_devagent_http_requests_total", route="(unmatched)", code="404") == before + 3
    assert agent_page("process_cpu_seconds_total") > 0

    # ------------------------------------------------------------------ the logs, once both have stopped
    # vault stops first, with a stream still open through web: past its drain grace it cancels the stream, and
    # grpc core on web's side of the connection reads that GOAWAY (and would write its own plain-text line).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{web.outbound_port}") as channel:
        open_stream = echo_pb2_grpc.EchoStub(channel).BidiStream(timeout=WAIT_S)
        await open_stream.write(HELLO)
        assert (await open_stream.read()).message == HELLO.message
        await asyncio.to_thread(vault.child.stop)
        with pytest.raises(grpc.aio.AioRpcError):
            await open_stream.read()
    web.child.stop()
    web_lines, vault_lines = json_lines(web), json_lines(vault)
    methods = (ECHO, ECHO_ONCE, SERVER_STREAM, CLIENT_STREAM)
    web_access = access_lines(web_lines, methods)
    vault_access = access_lines(vault_lines, methods)
    assert _tally(web_access) == codes
    assert _tally(vault_access) == to_vault
    refused_by_vault = ("PERMISSION_DENIED", "RESOURCE_EXHAUSTED")  # before its server span: no ids of their own
    for line in web_access + [line for line in vault_access if line["code"] not in refused_by_vault]:
        assert line["trace_id"], line
        assert line["span_id"], line  # stream lines too (written after the span ended)
    assert exemplars <= {line["trace_id"] for line in web_access}
    # The denied calls: one line at once, the other in the window's line with its count (at the stop, if not before).
    denials = [line for line in vault_lines if line.get("event") == "authz_denied"]
    assert sum(line["count"] for line in denials) == 2
    assert {(line["caller_service"], line["method"]) for line in denials} == {("web", f"/{CLIENT_STREAM}")}


def _requests(scraped: Scrape, **labels: str) -> dict[tuple[str, str], float]:
    """meshlet_requests_total of the Echo service with exactly `labels` (and a method and code), by (method, code),
    zeros left out: the mesh's own reflection probes are not the test's calls."""
    found: dict[tuple[str, str], float] = {}
    for (name, have), value in scraped.samples.items():
        named = dict(have)
        shape = name == "meshlet_requests_total" and value and set(named) == {*labels, "method", "code"}
        if shape and named["method"].startswith(ECHO_SERVICE) and all(named[k] == v for k, v in labels.items()):
            found[(named["method"], named["code"])] = value
    return found


def _inbound_done(sidecar: SidecarProcess, calls: int) -> bool:
    """Whether the sidecar has counted `calls` inbound calls of the Echo service (a stream: once grpc ends it)."""
    import urllib.request

    with urllib.request.urlopen(f"{sidecar.admin_url}/metrics", timeout=5) as response:
        scraped = Scrape(response.read().decode())
    counted = _requests(scraped, direction="inbound", service="vault", caller="web")
    return sum(count for (method, _), count in counted.items() if method.startswith(ECHO_SERVICE)) >= calls


def _tally(lines: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], int] = {}
    for line in lines:
        found[(line["method"], line["code"])] = found.get((line["method"], line["code"]), 0) + 1
    return found


def _assert_process_basics(scraped: Scrape) -> None:
    build = {"version": _meshlet_version(), "python": platform.python_version(), "grpcio": grpc.__version__}
    assert scraped("meshlet_build_info", **build) == 1
    assert scraped("process_cpu_seconds_total") > 0
    assert scraped.matching("python_info") == 1
    assert scraped.matching("python_gc_collections_total") > 0
    created = sorted(name for name in scraped.families if name.endswith("_created"))
    assert not created, f"stray *_created families: {created}"


def _meshlet_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("meshlet")


# A server stopping under an open stream sends GOAWAY "Cancelling all calls"; grpc core on the client's side
# writes a plain-text INFO line about it (chttp2_transport.cc ... Got goaway) unless told otherwise. Importing
# meshlet first, as every meshlet process does, must keep such lines out of its log.
GOAWAY_SCRIPT = """
import meshlet  # first, as meshlet's entry points import it before grpc
import asyncio
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


async def stop_under_an_open_stream():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        await watch.read()
        await server.stop(None)
        try:
            await watch.read()
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)


async def main():
    for _ in range(20):  # grpc core logs the goaway on some runs, not all
        await stop_under_an_open_stream()


asyncio.run(main())
"""


def test_a_meshlet_process_writes_no_grpc_core_line_when_a_server_goes_away(procs: Processes) -> None:
    # Without the GRPC_VERBOSITY this test process has (its own import of meshlet set it): as an operator starts one.
    child = procs.start(["env", "-u", "GRPC_VERBOSITY", sys.executable, "-c", GOAWAY_SCRIPT], name="goaway")
    assert child.wait(WAIT_S) == 0, child.output()
    assert child.output() == ""


async def test_a_breaker_opening_an_ejection_and_a_dry_retry_budget_are_each_logged_once(
    fleet: EchoFleet, mesh_factory: MeshFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fleet.start("good-1")
    fleet.start("good-2")
    fleet.start("bad", "--fail-code", "UNAVAILABLE")
    port = free_port()
    mesh = mesh_factory(
        **{
            "telemetry.metrics_port": port,
            "upstream_defaults.breaker.failures": 2,
            "upstream_defaults.breaker.reset_timeout": 60,  # no probe within the test
            "upstream_defaults.breaker.reset_timeout_max": 60,
            # one retry per 10 s window: the bad instance's first failure is retried, its second is not
            "upstream_defaults.retry.budget_ratio": 0,
            "upstream_defaults.retry.budget_min_per_s": 0.1,
        }
    )
    await mesh.start()
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
    bad = f"127.0.0.1:{fleet.ports['bad']}"
    url = f"http://127.0.0.1:{port}/metrics"
    with caplog.at_level(logging.INFO, logger="meshlet.state"):
        codes = []
        while (await scrape(url))("meshlet_breaker_state", service=fleet.service, endpoint=bad) != 2:
            codes.append(await code_of(stub.Echo(HELLO, timeout=5)))
            assert len(codes) < 1000, "the bad instance's breaker never opened"
        seen = await scrape(url)
        await mesh.close()  # writes what the log windows held back
    lines = [record for record in caplog.records if record.name == "meshlet.state"]
    events = [(record.event, getattr(record, "endpoint", None)) for record in lines]  # type: ignore[attr-defined]
    assert events == [
        ("breaker_opened", bad),
        ("endpoint_ejected", bad),
        ("retry_budget_exhausted", None),
    ] or events == [("retry_budget_exhausted", None), ("breaker_opened", bad), ("endpoint_ejected", bad)]
    assert seen("meshlet_breaker_transitions_total", service=fleet.service, endpoint=bad, state="open") == 1
    assert seen("meshlet_retry_budget_refusals_total", service=fleet.service) == 1
    assert codes.count("UNAVAILABLE") == 1  # the failure the budget refused to retry; the other was retried
    for record in lines:
        assert record.service == fleet.service  # type: ignore[attr-defined]
        assert record.reason  # type: ignore[attr-defined]
        assert record.count == 1  # type: ignore[attr-defined]
