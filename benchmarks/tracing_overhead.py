"""What tracing costs per call, at sample ratio 1.0 and 0.0, next to tracing off, in the SDK and in a sidecar hop.

Spans go over OTLP/gRPC to a real receiver in its own process (``tests.support.otlp_receiver``), through the
batch processor as in production, so the cost includes building, batching and encoding spans (the exporter's
worker thread runs in the measured process and its CPU counts).

- SDK: a unary echo (64 B) from this process through ``mesh.channel()`` to an echo server process, with three
  meshes side by side (tracing off, ratio 0.0, ratio 1.0). One call in flight; the modes take turns in blocks
  of BENCH_TRACING_DURATION_S (default 3) over BENCH_TRACING_ROUNDS (default 3), each round starting with
  another mode, each block ending with a flush of the exporter inside its timing. Client CPU per call is this
  process's CPU time over the block, split into the event loop's thread (the calls, and the spans started and
  ended on their path) and the others (gRPC's threads, and the batch worker that encodes and sends the spans).
- Sidecar: a plain client -> sidecar A (outbound) ==mTLS==> sidecar B (inbound) -> plain app, one pair per mode,
  open loop at BENCH_TRACING_RATE calls/s (default 200); CPU per call is A's and B's CPU (from /proc) over the run.

The issue's targets: unsampled <= 2 % added CPU per call, sampled <= 15 %. Nothing is asserted.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from benchmarks.sdk_overhead import Result, closed_loop, open_loop
from benchmarks.sidecar_overhead import cpu_seconds
from benchmarks.sidecar_pair import start_echo_pair
from meshlet.config import load_config
from meshlet.mesh import Mesh
from meshlet.security.dev_ca import init_ca, issue
from meshlet.telemetry.span_file import encode
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Child, Processes, free_port, processes, wait_until
from tests.support.sidecars import SidecarProcess, start_plain_app

DURATION_S = float(os.environ.get("BENCH_TRACING_DURATION_S", "3"))
ROUNDS = int(os.environ.get("BENCH_TRACING_ROUNDS", "3"))
RATE = float(os.environ.get("BENCH_TRACING_RATE", "200"))
REQUEST = echo_pb2.EchoRequest(message="x" * 64)
MODES: dict[str, float | None] = {"off": None, "ratio 0.0": 0.0, "ratio 1.0": 1.0}
TARGETS = {"ratio 0.0": 0.02, "ratio 1.0": 0.15}
WARMUP_CALLS = 300
START_S = 30.0
EXPORT_BATCH = 256  # calls whose spans make one export batch in `export_costs`


def start_receiver(procs: Processes) -> str:
    port = free_port()
    child = procs.start([sys.executable, "-m", "tests.support.otlp_receiver", "--port", str(port)], name="otlp")
    wait_until(lambda: f"listening on {port}" in child.output() or not child.alive(), START_S, "the OTLP receiver")
    return f"http://127.0.0.1:{port}"


def start_echo_server(procs: Processes, agent: Agent) -> Child:
    port = free_port()
    child = procs.start(
        [sys.executable, "-m", "tests.support.echo_server", "--name", "bench-echo", "--port", str(port)],
        name="echo",
        env={"CONSUL_HTTP_ADDR": agent.url, "MESHLET_SERVICE__NAME": "bench-echo"},
    )
    wait_until(lambda: bool(agent.passing("bench-echo")), START_S, "the echo server to pass its check")
    return child


def caller(echo: Callable[..., Awaitable[object]]) -> Callable[[], Awaitable[object]]:
    def call() -> Awaitable[object]:
        return echo(REQUEST, timeout=5)

    return call


def rotated(modes: list[str], by: int) -> list[str]:
    """Each round starts with another mode, so drift on a shared machine does not favour one."""
    by %= len(modes)
    return modes[by:] + modes[:by]


def verdict(mode: str, value: float, off: float) -> str:
    if mode not in TARGETS or not off:
        return ""
    added = value / off - 1
    return f"{added:+8.1%} (target <= {TARGETS[mode]:.0%}: {'ok' if added <= TARGETS[mode] else 'OVER'})"


# ------------------------------------------------------------------------------------------ the SDK


async def sdk(agent: Agent, otlp: str) -> None:
    meshes: dict[str, Mesh] = {}
    for mode, ratio in MODES.items():
        telemetry = {} if ratio is None else {"otlp_endpoint": otlp, "sample_ratio": ratio}
        config = load_config(
            None,
            env={},
            overrides={"consul": {"address": agent.url}, "service": {"name": "bench-client"}, "telemetry": telemetry},
        )
        meshes[mode] = Mesh(config)
    try:
        calls = {mode: caller(echo_pb2_grpc.EchoStub(mesh.channel("bench-echo")).Echo) for mode, mesh in meshes.items()}
        for call in calls.values():
            for _ in range(WARMUP_CALLS):
                await call()
        results = {mode: Result(latencies=[]) for mode in MODES}
        loop_cpu = dict.fromkeys(MODES, 0.0)
        for round_ in range(ROUNDS):
            for mode in rotated(list(calls), round_):
                call, tracing = calls[mode], meshes[mode].tracing
                gc.collect()  # the garbage a sampled block leaves must not be collected on the next block's time
                cpu, loop = time.process_time(), time.thread_time()  # every thread's: the exporter's worker included
                result = await closed_loop(call, 1, DURATION_S)
                loop_cpu[mode] += time.thread_time() - loop
                if tracing is not None:  # the block's spans are encoded and sent inside its own timing
                    await asyncio.to_thread(tracing.force_flush)
                result.cpu_s = time.process_time() - cpu
                results[mode].merge(result)
    finally:
        for mesh in meshes.values():
            await mesh.close()
    off = results["off"].cpu_us_per_call
    print(f"\n== Tracing in the SDK: unary echo 64 B, 1 in flight, {ROUNDS} x {DURATION_S:.0f} s per mode ==")
    print(
        f"{'mode':<12}{'calls':>8}{'p50 ms':>9}{'p99 ms':>9}{'client CPU/call':>18}{'loop':>8}{'others':>8}"
        "   added CPU vs off"
    )
    for mode, result in results.items():
        cpu_per_call = result.cpu_us_per_call
        loop = loop_cpu[mode] / result.calls * 1e6 if result.calls else 0.0
        print(
            f"{mode:<12}{result.calls:>8}{result.percentile(0.5):9.3f}{result.percentile(0.99):9.3f}"
            f"{cpu_per_call:15.0f} us{loop:8.0f}{cpu_per_call - loop:8.0f}   {verdict(mode, cpu_per_call, off)}"
        )
    print(
        "loop: the event loop's thread (the calls, and the spans started, ended and injected on their path);"
        " others: every other thread (gRPC's, and the batch worker encoding and sending the spans)"
    )
    await export_costs(agent)


async def export_costs(agent: Agent) -> None:
    """What the batch worker spends per span, on the spans a sampled call really makes (its call and attempt
    spans): the OTLP exporter's encoding into protobuf, serializing that, and a span file's JSON line."""
    collected = InMemorySpanExporter()
    config = load_config(
        None,
        env={},
        overrides={"consul": {"address": agent.url}, "service": {"name": "bench-client"}, "telemetry": {}},
    )
    mesh = Mesh(config, span_exporters=[collected])
    try:
        call = caller(echo_pb2_grpc.EchoStub(mesh.channel("bench-echo")).Echo)
        for _ in range(EXPORT_BATCH):
            await call()
        if mesh.tracing is not None:
            await asyncio.to_thread(mesh.tracing.force_flush)
    finally:
        await mesh.close()
    spans = collected.get_finished_spans()
    costs = dict.fromkeys(("OTLP encode", "OTLP serialize", "span file line"), float("inf"))
    for _ in range(5):  # the least of five: what it costs when nothing else takes the CPU meanwhile
        start = time.thread_time()
        request = encode_spans(spans)
        encoded = time.thread_time()
        request.SerializeToString()
        serialized = time.thread_time()
        "".join(json.dumps(encode(span), default=str) + "\n" for span in spans)
        done = time.thread_time()
        for name, spent in zip(costs, (encoded - start, serialized - encoded, done - serialized), strict=True):
            costs[name] = min(costs[name], spent / len(spans) * 1e6)
    print(f"per span, in the batch worker ({len(spans)} spans of {EXPORT_BATCH} calls, in one batch):")
    print("   ".join(f"{name} {cost:.0f} us" for name, cost in costs.items()))


# ------------------------------------------------------------------------------------------ a sidecar hop


def start_pair(
    procs: Processes, folder: Path, certs: Path, agent: Agent, app: str, mode: str, ratio: float | None, otlp: str
) -> tuple[SidecarProcess, SidecarProcess]:
    upstream = f"b-{mode.replace(' ', '-').replace('.', '')}"
    issue(certs, upstream)  # the callers check that the server is the service they asked for
    telemetry = {"telemetry": {} if ratio is None else {"otlp_endpoint": otlp, "sample_ratio": ratio}}
    return start_echo_pair(
        procs, folder, certs, agent, app, upstream=upstream, label=upstream, b_config=telemetry, a_config=telemetry
    )


async def sidecar_hop(procs: Processes, folder: Path, agent: Agent, otlp: str) -> None:
    certs = folder / "certs"
    init_ca(certs, "meshlet.bench")
    issue(certs, "a-svc")
    app = start_plain_app(procs, "app", with_reflection=True)
    pairs = {
        mode: start_pair(procs, folder, certs, agent, app.address, mode, ratio, otlp) for mode, ratio in MODES.items()
    }
    channels = {mode: grpc.aio.insecure_channel(f"127.0.0.1:{a.outbound_port}") for mode, (a, _b) in pairs.items()}
    try:
        calls = {mode: caller(echo_pb2_grpc.EchoStub(channel).Echo) for mode, channel in channels.items()}
        for call in calls.values():
            for _ in range(WARMUP_CALLS):
                await call()
        results = {mode: Result(latencies=[]) for mode in MODES}
        sidecar_cpu = dict.fromkeys(MODES, 0.0)
        for round_ in range(ROUNDS):
            for mode in rotated(list(calls), round_):
                call, (a, b) = calls[mode], pairs[mode]
                before = cpu_seconds(a.child.pid) + cpu_seconds(b.child.pid)
                results[mode].merge(await open_loop(call, RATE, DURATION_S))
                await asyncio.sleep(0.6)  # let the batch processors of this pair export what the run queued
                sidecar_cpu[mode] += cpu_seconds(a.child.pid) + cpu_seconds(b.child.pid) - before
    finally:
        for channel in channels.values():
            await channel.close()
    per_call = {mode: sidecar_cpu[mode] / results[mode].calls * 1e6 for mode in MODES}
    print(
        f"\n== Tracing in a sidecar hop (A outbound ==mTLS==> B inbound): unary echo 64 B, open loop "
        f"{RATE:.0f}/s, {ROUNDS} x {DURATION_S:.0f} s per mode =="
    )
    print(f"{'mode':<12}{'calls':>8}{'p50 ms':>9}{'p99 ms':>9}{'A+B CPU/call':>15}   added CPU vs off")
    for mode, result in results.items():
        print(
            f"{mode:<12}{result.calls:>8}{result.percentile(0.5):9.3f}{result.percentile(0.99):9.3f}"
            f"{per_call[mode]:12.0f} us   {verdict(mode, per_call[mode], per_call['off'])}"
        )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="meshlet-tracing-bench-") as tmp, processes(Path(tmp)) as procs:
        folder = Path(tmp)
        agent = start_dev_agent(procs)
        otlp = start_receiver(procs)
        start_echo_server(procs, agent)
        asyncio.run(sdk(agent, otlp))
        asyncio.run(sidecar_hop(procs, folder, agent, otlp))


if __name__ == "__main__":
    main()
