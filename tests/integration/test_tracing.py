"""One request, one trace, across every kind of hop meshlet has, received by a real OTLP collector:

    SDK client ==mTLS==> sidecar A (inbound) -> app A (plain grpcio, passes the trace context on, as an
    instrumented app does) -> sidecar A (outbound) ==mTLS==> sidecar B1 -> app B1 (answers UNAVAILABLE)
                                                 \\=(retry)==> sidecar B2 -> app B2 (plain echo app)

The test process is the SDK client, the OTLP receiver (opentelemetry-proto's TraceService on loopback) and the
three apps; the dev agent and the three sidecars are their own processes. The trace must hold every span with
the right parent: the client's call and attempt, sidecar A's server span (the caller's SPIFFE ID on it), sidecar
A's outbound call continuing the context app A sent, one attempt per endpoint tried (the failed one included,
with its status and endpoint), and each B sidecar's server span under the attempt that reached it; and the
plain apps must have received a traceparent whose parent is their own sidecar's server span.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshlet.cli import main
from meshlet.config import load_config
from meshlet.mesh import Mesh
from meshlet.security.dev_ca import init_ca, issue
from meshlet.telemetry.waterfall import load_spans, traces
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.support.agents import Agent, start_dev_agent
from tests.support.otlp_receiver import ReceivedSpan, otlp_receiver
from tests.support.plain_app import plain_app
from tests.support.processes import Processes, eventually, free_port, wait_until
from tests.support.sidecars import SidecarProcess, admin_get, local_port_flag, start_sidecar, tls_files

pytestmark = [pytest.mark.slow]

TRUST_DOMAIN = "meshlet.test"
ECHO = "/meshlet_api.echo.v1.Echo/Echo"
SPAN_NAME = "meshlet_api.echo.v1.Echo/Echo"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # sidecars export within 0.1 s, so the test waits less


def spiffe(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/{service}"


def parent_in(traceparent: str) -> str:
    return traceparent.split("-")[2]


class RelayApp:
    """App A: a plain grpcio app whose Echo calls b-svc through its sidecar's local port, passing on the trace
    context it received, as any OpenTelemetry-instrumented app does. Records the traceparent it got."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.received: list[str] = []
        self.port = 0

    async def echo(self, request: bytes, context: Any) -> bytes:
        metadata = dict(context.invocation_metadata())
        self.received.append(str(metadata.get("traceparent", "")))
        passed_on = [(key, value) for key, value in metadata.items() if key in ("traceparent", "tracestate")]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.upstream_port}") as channel:
            reply: bytes = await channel.unary_unary(ECHO)(request, metadata=passed_on, timeout=10)
        return reply


@contextlib.asynccontextmanager
async def serving(handlers: dict[str, Any]) -> AsyncIterator[int]:
    """A plain grpc.aio server on a free loopback port with raw-bytes unary Echo `handlers`."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "meshlet_api.echo.v1.Echo",
                {name: grpc.unary_unary_rpc_method_handler(handler) for name, handler in handlers.items()},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def always_unavailable(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "app B1 is failing on purpose")
    return b""  # pragma: no cover - abort raises


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    init_ca(certs, TRUST_DOMAIN)
    for service in ("client", "a-svc", "b-svc"):
        issue(certs, service)
    return certs


@pytest.fixture
def agent(procs: Processes) -> Agent:
    return start_dev_agent(procs)


def telemetry(otlp: str, span_file: Path) -> dict[str, Any]:
    return {"otlp_endpoint": otlp, "sample_ratio": 1.0, "span_file": str(span_file)}


def sidecar_config(pki: Path, agent: Agent, service: str, otlp: str, span_file: Path, **extra: Any) -> dict[str, Any]:
    return {
        "service": {"name": service, "check_ttl": "2s", "drain_grace": "1s"},
        "consul": {"address": agent.url},
        "tls": tls_files(pki, service),
        "telemetry": telemetry(otlp, span_file),
        **extra,
    }


async def started(*args: Any, **kwargs: Any) -> SidecarProcess:
    """start_sidecar in a thread: the apps live on this loop, which must keep answering health probes."""
    return await asyncio.to_thread(start_sidecar, *args, env=FAST_EXPORT, **kwargs)


def one(spans: list[ReceivedSpan], **where: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, key) == value for key, value in where.items())]
    assert len(found) == 1, f"expected one span with {where}, got {found}"
    return found[0]


def attempts_under(spans: list[ReceivedSpan], call: ReceivedSpan) -> list[ReceivedSpan]:
    found = [s for s in spans if s.parent_id == call.span_id and "meshlet.attempt" in s.attributes]
    return sorted(found, key=lambda s: int(s.attributes["meshlet.attempt"]))


async def test_one_trace_spans_sdk_client_sidecars_and_plain_apps_with_the_retry_visible(
    procs: Processes,
    tmp_path: Path,
    pki: Path,
    agent: Agent,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tmp_folder = tmp_path
    span_files = {name: tmp_path / f"{name}.spans.jsonl" for name in ("client", "a", "b1", "b2")}
    async with (
        otlp_receiver() as receiver,
        plain_app() as app_b2,
        serving({"Echo": always_unavailable}) as app_b1_port,
    ):
        otlp = receiver.endpoint
        b1_config = sidecar_config(pki, agent, "b-svc", otlp, span_files["b1"])
        b2_config = sidecar_config(pki, agent, "b-svc", otlp, span_files["b2"])
        sidecar_b1 = await started(procs, tmp_folder, "b1", b1_config, app=f"127.0.0.1:{app_b1_port}")
        sidecar_b2 = await started(procs, tmp_folder, "b2", b2_config, app=f"127.0.0.1:{app_b2.port}")
        local_port = free_port()
        relay = RelayApp(local_port)
        async with serving({"Echo": relay.echo}) as app_a_port:
            a_config = sidecar_config(
                pki,
                agent,
                "a-svc",
                otlp,
                span_files["a"],
                # round robin: of two calls, one tries B1 first; a breaker that never opens keeps B1 in the pick
                upstreams={
                    "b-svc": {
                        "balancer": "round_robin",
                        "breaker": {"failures": 1000},
                        "retry": {"idempotent": [ECHO], "on": ["UNAVAILABLE"]},
                    }
                },
            )
            sidecar_a = await started(
                procs,
                tmp_folder,
                "a",
                a_config,
                app=f"127.0.0.1:{app_a_port}",
                flags=local_port_flag("b-svc", local_port),
            )
            for service, count in (("b-svc", 2), ("a-svc", 1)):  # ready sidecars, but Consul learns it at a beat
                await asyncio.to_thread(wait_until, passing(agent, service, count), 30, f"{service} to pass")
            config = load_config(
                None,
                env={},
                overrides={
                    "service": {"name": "client"},
                    "consul": {"address": agent.url},
                    "tls": tls_files(pki, "client"),
                    "telemetry": telemetry(otlp, span_files["client"]),
                },
            )
            async with Mesh(config) as mesh:
                stub = echo_pb2_grpc.EchoStub(mesh.channel("a-svc"))
                with_retry: list[ReceivedSpan] | None = None
                for n in range(4):
                    relay.received.clear()
                    app_b2.seen.clear()
                    reply = await stub.Echo(echo_pb2.EchoRequest(message=f"hello {n}"), timeout=10)
                    assert reply.message == f"hello {n}"
                    assert mesh.tracing is not None
                    await asyncio.to_thread(mesh.tracing.force_flush)
                    trace_id = _client_trace(receiver.spans, n)
                    spans = await receiver.wait_for(trace_id, 6)
                    outbound = [s for s in spans if s.service == "a-svc" and s.kind == "CLIENT"]
                    if len(outbound) == 2:  # sidecar A's two attempts: B1 failed, B2 answered
                        with_retry = await receiver.wait_for(trace_id, 10)
                        break
                assert with_retry is not None, f"no call tried B1 first: {receiver.spans}"
    _assert_trace(
        with_retry, relay.received, app_b2.seen[-1].metadata["traceparent"], sidecar_b1, sidecar_b2, sidecar_a
    )

    # The same trace from the processes' span files, as `meshlet trace` shows it on a machine without Jaeger.
    trace_id = with_retry[0].trace_id
    wait_until(lambda: len(traces(load_spans(span_files.values())).get(trace_id, ())) == len(with_retry), 30, "spans")
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: no label cut short
    assert main(["trace", trace_id[:12], "--spans", *map(str, span_files.values())]) == 0
    shown = capsys.readouterr().out
    assert f"trace {trace_id} · {len(with_retry)} spans" in shown
    assert f"attempt 1 → 127.0.0.1:{sidecar_b1.inbound_port}" in shown
    assert f"attempt 2 → 127.0.0.1:{sidecar_b2.inbound_port}" in shown
    assert "retry.scheduled" in shown
    assert "a-svc (sidecar)" in shown


def _client_trace(spans: list[ReceivedSpan], n: int) -> str:
    """The trace of the client's n-th call: its root spans, in the order the calls were made."""
    roots = [s for s in spans if s.service == "client" and s.parent_id is None]
    assert len(roots) == n + 1, roots
    return roots[n].trace_id


def _assert_trace(
    spans: list[ReceivedSpan],
    app_a_received: list[str],
    app_b2_received: str,
    sidecar_b1: SidecarProcess,
    sidecar_b2: SidecarProcess,
    sidecar_a: SidecarProcess,
) -> None:
    assert {s.name for s in spans} == {SPAN_NAME}
    assert len({s.trace_id for s in spans}) == 1

    client_call = one(spans, service="client", parent_id=None)
    assert client_call.kind == "INTERNAL"  # the logical call; its attempts are the CLIENT spans
    assert client_call.attributes["rpc.system"] == "grpc"
    assert client_call.attributes["rpc.service"] == "meshlet_api.echo.v1.Echo"
    assert client_call.attributes["rpc.method"] == "Echo"
    assert client_call.attributes["rpc.grpc.status_code"] == 0
    (client_attempt,) = attempts_under(spans, client_call)
    assert client_attempt.attributes["server.port"] == sidecar_a.inbound_port

    a_server = one(spans, service="a-svc", kind="SERVER")
    assert a_server.parent_id == client_attempt.span_id
    assert a_server.attributes["meshlet.peer.identity"] == spiffe("client")
    assert a_server.resource["meshlet.face"] == "sidecar"
    assert [parent_in(tp) for tp in app_a_received] == [a_server.span_id]  # app A's parent: its sidecar's span

    a_call = one(spans, service="a-svc", kind="INTERNAL", parent_id=a_server.span_id)
    assert "retry.scheduled" in a_call.events
    assert a_call.attributes["meshlet.attempts"] == 2
    failed, answered = attempts_under(spans, a_call)
    assert [s.span_id for s in spans if s.kind == "CLIENT"] == [  # one CLIENT span per wire attempt, none per call
        s.span_id for s in sorted((client_attempt, failed, answered), key=spans.index)
    ]
    assert failed.attributes["meshlet.attempt"] == 1
    assert failed.attributes["server.port"] == sidecar_b1.inbound_port
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert failed.status == "ERROR"
    assert answered.attributes["meshlet.attempt"] == 2
    assert answered.attributes["server.port"] == sidecar_b2.inbound_port
    assert answered.attributes["rpc.grpc.status_code"] == 0
    assert answered.attributes["meshlet.backoff_s"] >= 0

    b_servers = [s for s in spans if s.service == "b-svc" and s.kind == "SERVER"]
    b1_server = one(b_servers, parent_id=failed.span_id)
    b2_server = one(b_servers, parent_id=answered.span_id)
    assert b1_server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert b2_server.attributes["rpc.grpc.status_code"] == 0
    assert b2_server.attributes["meshlet.peer.identity"] == spiffe("a-svc")
    assert parent_in(app_b2_received) == b2_server.span_id  # app B2's parent: sidecar B2's span


def passing(agent: Agent, service: str, count: int = 1) -> Callable[[], bool]:
    return lambda: len(agent.passing(service)) >= count


async def test_an_sdk_servers_own_calls_are_children_of_its_server_span(procs: Processes, agent: Agent) -> None:
    """SDK mode end to end: client -> relay (an SDK server whose Echo calls echo-back through mesh.channel) ->
    echo-back, each its own process; the relay's outbound call hangs under its server span (contextvars)."""
    async with otlp_receiver() as receiver:
        env = {
            "CONSUL_HTTP_ADDR": agent.url,
            "MESHLET_SERVICE__CHECK_TTL": "1s",
            "MESHLET_TELEMETRY__OTLP_ENDPOINT": receiver.endpoint,
            **FAST_EXPORT,
        }
        for name, extra in (("echo-back", []), ("relay", ["--upstream", "echo-back"])):
            port = free_port()
            procs.start(
                [sys.executable, "-m", "tests.support.echo_server", "--name", name, "--port", str(port), *extra],
                name=name,
                env={**env, "MESHLET_SERVICE__NAME": name},
            )
            await asyncio.to_thread(wait_until, passing(agent, name), 30, f"{name} to pass its check")
        config = load_config(
            None,
            env={},
            overrides={"consul": {"address": agent.url}, "telemetry": {"otlp_endpoint": receiver.endpoint}},
        )
        async with Mesh(config) as mesh:
            reply = await echo_pb2_grpc.EchoStub(mesh.channel("relay")).Echo(echo_pb2.EchoRequest(message="hi"))
        assert reply.served_by == "relay"
        (root,) = [s for s in receiver.spans if s.parent_id is None]
        spans = await receiver.wait_for(root.trace_id, 6)

    (client_attempt,) = attempts_under(spans, root)
    relay_server = one(spans, service="relay", kind="SERVER")
    assert relay_server.parent_id == client_attempt.span_id
    assert relay_server.resource["meshlet.face"] == "sdk"
    relay_call = one(spans, service="relay", kind="INTERNAL", parent_id=relay_server.span_id)
    (relay_attempt,) = attempts_under(spans, relay_call)
    back_server = one(spans, service="echo-back", kind="SERVER")
    assert back_server.parent_id == relay_attempt.span_id
    assert back_server.attributes["rpc.grpc.status_code"] == 0


async def test_spans_a_dead_collector_never_took_are_counted_as_export_failures_not_as_queue_drops(
    procs: Processes, tmp_path: Path, pki: Path, agent: Agent
) -> None:
    """A sidecar exporting to an OTLP port where nothing listens: each of its server spans is counted once in
    ``meshlet_spans_export_failed_total{reason="export_failed"}``; the queue never overflowed, so
    ``meshlet_spans_dropped_total`` stays 0."""
    from tests.integration.test_metrics import scrape

    dead = f"http://127.0.0.1:{free_port()}"
    calls = 5
    async with plain_app() as app:
        config = {
            **sidecar_config(pki, agent, "b-svc", dead, tmp_path / "b.spans.jsonl"),
            "telemetry": {"otlp_endpoint": dead, "sample_ratio": 1.0},
        }
        env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}  # the exporter gives up on a batch within ~1 s
        sidecar = await asyncio.to_thread(
            start_sidecar, procs, tmp_path, "b", config, app=f"127.0.0.1:{app.port}", env=env
        )
        await asyncio.to_thread(wait_until, passing(agent, "b-svc"), 30, "b-svc to pass its check")
        client = load_config(
            None,
            env={},
            overrides={
                "service": {"name": "client"},
                "consul": {"address": agent.url},
                "tls": tls_files(pki, "client"),
            },
        )
        async with Mesh(client) as mesh:
            stub = echo_pb2_grpc.EchoStub(mesh.channel("b-svc"))
            for n in range(calls):
                assert (await stub.Echo(echo_pb2.EchoRequest(message=f"hi {n}"), timeout=10)).message == f"hi {n}"

        async def failed_exports() -> float:
            return (await scrape(f"{sidecar.admin_url}/metrics"))(
                "meshlet_spans_export_failed_total", reason="export_failed"
            )

        with contextlib.suppress(AssertionError):  # bounded wait; the assertion below says what was seen
            await eventually(lambda: _at_least(failed_exports, calls), "the export failures to be counted")
        seen = await scrape(f"{sidecar.admin_url}/metrics")
    assert seen("meshlet_spans_export_failed_total", reason="export_failed") == calls  # one SERVER span per call
    assert seen("meshlet_spans_export_failed_total", reason="exporter_error") == 0
    assert seen("meshlet_spans_dropped_total") == 0


async def _at_least(read: Callable[[], Any], count: float) -> bool:
    return bool(await read() >= count)


async def test_the_mesh_asking_an_upstreams_reflection_is_in_no_users_metrics_trace_or_access_log(
    procs: Processes, tmp_path: Path, pki: Path, agent: Agent
) -> None:
    """Sidecar A asks b-svc's reflection service through the mesh (b-svc's app has none: UNIMPLEMENTED) and
    the app behind A makes 3 calls: both sidecars count 3 calls, export the spans of 3 calls, log 3 lines."""
    from tests.integration.test_metrics import scrape

    calls = 3
    async with otlp_receiver() as receiver, plain_app() as app_a, plain_app() as app_b:  # no reflection service
        otlp = receiver.endpoint
        b_config = sidecar_config(pki, agent, "b-svc", otlp, tmp_path / "b.spans.jsonl")
        b_config["telemetry"]["access_log"] = True
        sidecar_b = await started(procs, tmp_path, "b", b_config, app=f"127.0.0.1:{app_b.port}")
        await asyncio.to_thread(wait_until, passing(agent, "b-svc"), 30, "b-svc to pass its check")
        a_config = sidecar_config(pki, agent, "a-svc", otlp, tmp_path / "a.spans.jsonl", upstreams={"b-svc": {}})
        a_config["telemetry"]["access_log"] = True
        local_port = free_port()
        sidecar_a = await started(  # with an app: it asks about its configured upstreams as it starts
            procs, tmp_path, "a", a_config, app=f"127.0.0.1:{app_a.port}", flags=local_port_flag("b-svc", local_port)
        )

        def asked() -> bool:
            return "cannot learn upstream b-svc's methods from its reflection service (UNIMPLEMENTED" in (
                sidecar_a.output()
            )

        await asyncio.to_thread(wait_until, asked, 30, "sidecar A to ask b-svc's reflection service")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{local_port}") as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for n in range(calls):
                assert (await stub.Echo(echo_pb2.EchoRequest(message=f"hi {n}"), timeout=10)).message == f"hi {n}"
        await eventually(lambda: len(receiver.spans) >= 3 * calls, "the calls' spans")  # A: call+attempt, B: server
        near = await scrape(f"{sidecar_a.admin_url}/metrics")
        far = await scrape(f"{sidecar_b.admin_url}/metrics")
        spans = list(receiver.spans)

    assert near.matching("meshlet_requests_total", direction="outbound") == calls
    assert near("meshlet_requests_total", direction="outbound", service="b-svc", method=ECHO[1:], code="OK") == calls
    assert near.matching("meshlet_attempts_total") == calls
    assert far.matching("meshlet_requests_total", direction="inbound") == calls
    assert far("meshlet_requests_total", direction="inbound", service="b-svc", method=ECHO[1:], code="OK") == calls
    assert sorted((s.service, s.kind) for s in spans) == sorted(
        [("a-svc", "INTERNAL"), ("a-svc", "CLIENT"), ("b-svc", "SERVER")] * calls
    )
    assert {s.name for s in spans} == {SPAN_NAME}
    assert [s for s in spans if s.status == "ERROR"] == []
    for sidecar in (sidecar_a, sidecar_b):
        access = [line for line in sidecar.output().splitlines() if '"logger": "meshlet.access"' in line]
        assert len(access) == calls, access
        assert all(ECHO[1:] in line for line in access)


async def test_invented_method_paths_are_unknown_in_metrics_and_span_names_and_crowd_out_no_real_method(
    procs: Processes, tmp_path: Path, pki: Path, agent: Agent
) -> None:
    """An app sends 600 invented method paths through sidecar A to sidecar B (whose app answers UNIMPLEMENTED),
    then 3 real calls: on both sidecars the junk is one ``(unknown)`` series and the real method is counted
    under its name; every span of a junk call is named ``(unknown)``. Neither app serves reflection, so Echo is
    named because it answered."""
    from tests.integration.test_metrics import scrape

    junk, calls = 600, 3
    async with otlp_receiver() as receiver, plain_app() as app_a, plain_app() as app_b:
        otlp = receiver.endpoint
        sidecar_b = await started(
            procs, tmp_path, "b", sidecar_config(pki, agent, "b-svc", otlp, tmp_path / "b.spans.jsonl"),
            app=f"127.0.0.1:{app_b.port}",
        )  # fmt: skip
        await asyncio.to_thread(wait_until, passing(agent, "b-svc"), 30, "b-svc to pass its check")
        local_port = free_port()
        a_config = sidecar_config(pki, agent, "a-svc", otlp, tmp_path / "a.spans.jsonl", upstreams={"b-svc": {}})
        sidecar_a = await started(
            procs, tmp_path, "a", a_config, app=f"127.0.0.1:{app_a.port}", flags=local_port_flag("b-svc", local_port)
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{local_port}") as channel:

            async def invented(n: int) -> grpc.StatusCode:
                try:
                    await channel.unary_unary(f"/junk.v{n}.Made{n}/Up{n}")(b"", timeout=10)
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            for first in range(0, junk, 50):
                codes = await asyncio.gather(*(invented(n) for n in range(first, first + 50)))
                assert set(codes) == {grpc.StatusCode.UNIMPLEMENTED}
            stub = echo_pb2_grpc.EchoStub(channel)
            for n in range(calls):
                assert (await stub.Echo(echo_pb2.EchoRequest(message=f"hi {n}"), timeout=10)).message == f"hi {n}"
        await eventually(lambda: len(receiver.spans) >= 3 * (junk + calls), "every call's spans", timeout_s=60)
        pages = {
            name: await scrape(f"{sidecar.admin_url}/metrics") for name, sidecar in (("a", sidecar_a), ("b", sidecar_b))
        }
        texts = {
            name: admin_get(f"{sidecar.admin_url}/metrics")[1] for name, sidecar in (("a", sidecar_a), ("b", sidecar_b))
        }
        spans = list(receiver.spans)

    for name, direction in (("a", "outbound"), ("b", "inbound")):
        seen = pages[name]
        mine = {"direction": direction, "service": "b-svc"}
        assert seen("meshlet_requests_total", **mine, method="(unknown)", code="UNIMPLEMENTED") == junk
        assert seen("meshlet_requests_total", **mine, method=ECHO[1:], code="OK") == calls
        assert seen.matching("meshlet_requests_total", direction=direction) == junk + calls
        assert "junk." not in texts[name], f"an invented path is a label value on sidecar {name}"
    named = sorted((s.name, s.service, s.kind) for s in spans)
    assert named == sorted(
        [("(unknown)", "a-svc", "INTERNAL"), ("(unknown)", "a-svc", "CLIENT"), ("(unknown)", "b-svc", "SERVER")] * junk
        + [(SPAN_NAME, "a-svc", "INTERNAL"), (SPAN_NAME, "a-svc", "CLIENT"), (SPAN_NAME, "b-svc", "SERVER")] * calls
    )
