"""What meshlet-edge adds to a call from outside the mesh, next to direct gRPC and next to the floor for a Python
HTTP -> gRPC JSON transcoder, in one run; and what the HTTP server library under such a transcoder costs.

One plain upstream (``tests.support.plain_app``, grpcio only), registered in a dev agent as ``echo``. Its Echo
method is given ``google.api.http`` rules in the descriptor set the edge reads (``GET /v1/echo/{message}``,
``POST /v1/echo`` with ``body: "*"``). The paths, each a real process on loopback:

    direct gRPC        client -> app (grpc.aio; the baseline the "added" columns subtract)
    edge               client -> meshlet-edge (aiohttp; mesh.channel("echo"): discovery, P2C, deadline, retry
                       budget, breaker, metrics; plaintext) -> app
    minimal aiohttp    client -> benchmarks/minimal_transcoder.py on aiohttp -> app   (no policies)
    minimal uvicorn    client -> the same transcoder as a bare ASGI app on uvicorn + httptools -> app

Requests: ``GET`` with the message in the path (a 40-byte answer); ``POST`` with a 1.5 KiB JSON text body
(an answer of the same size) sent with ``Accept-Encoding: identity`` ("gzip off") and again with
``Accept-Encoding: gzip`` ("gzip on": the minimal transcoders compress answers of 1 KiB and more; the edge's row
says what it answered, ``gzip`` or ``identity``, and the bytes on the wire). The HTTP client is one aiohttp
session in this process, the same for every HTTP path, so its cost cancels out of every comparison between them.

Open loop at a fixed rate (latency from the scheduled send: no coordinated omission) gives p50/p99 and, from
/proc (utime + stime of the proxy process over those runs), CPU-seconds per 1,000 requests; closed loop at 1
and 32 in flight gives requests/s. Paths alternate within each cell, so drift on a shared machine hits all alike.
Nothing is asserted: the tables put the figures beside the issue's target, the edge within 1.2x the minimal
transcoder's added p50 and CPU.

Knobs: BENCH_EDGE_DURATION_S (per cell, default 3), BENCH_EDGE_ROUNDS (default 1), BENCH_EDGE_RATE (open loop,
default 100/s), BENCH_EDGE_IN_FLIGHT (default "1,32"), BENCH_EDGE_SERVERS (minimal transcoders, default
"aiohttp,uvicorn"; uvicorn is skipped with a note when it is not installed: pip install uvicorn httptools).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from benchmarks.sdk_overhead import Result, closed_loop, open_loop
from benchmarks.sidecar_overhead import cpu_seconds, wait_port
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.support.agents import Agent, start_dev_agent
from tests.support.descriptor_sets import descriptor_set
from tests.support.processes import Processes, free_port, http_ok, processes, wait_until
from tests.support.sidecars import start_plain_app, write_config

DURATION_S = float(os.environ.get("BENCH_EDGE_DURATION_S", "3"))
ROUNDS = int(os.environ.get("BENCH_EDGE_ROUNDS", "1"))
RATE = float(os.environ.get("BENCH_EDGE_RATE", "100"))
IN_FLIGHT = [int(n) for n in os.environ.get("BENCH_EDGE_IN_FLIGHT", "1,32").split(",")]
SERVERS = [s for s in os.environ.get("BENCH_EDGE_SERVERS", "aiohttp,uvicorn").split(",") if s]

TARGET = 1.2  # the bar: the edge within 1.2x the minimal transcoder's added p50 and CPU
UPSTREAM = "echo"
ECHO_SERVICE = "meshlet_api.echo.v1.Echo"
TIMEOUT_S = 5.0
WARMUP_CALLS = 200
START_S = 30.0  # a bound on waiting for a process to serve, never a measurement

_WORDS = ("order", "sku", "tea", "coffee", "mug", "quantity", "customer", "reserved", "charged", "shipped", "the", "of")
_RANDOM = random.Random(13)
TEXT = " ".join(_RANDOM.choice(_WORDS) for _ in range(400))[:1536]  # compresses about as prose does


@dataclass(frozen=True)
class Kind:
    """One kind of request, as HTTP and as the gRPC call it becomes."""

    name: str
    method: str
    path: str
    body: bytes | None
    accept_encoding: str
    grpc_request: echo_pb2.EchoRequest


KINDS = [
    Kind("GET", "GET", "/v1/echo/bench", None, "identity", echo_pb2.EchoRequest(message="bench")),
    Kind(
        "POST",
        "POST",
        "/v1/echo",
        json.dumps({"message": TEXT}).encode(),
        "identity",
        echo_pb2.EchoRequest(message=TEXT),
    ),
    Kind(
        "POST gzip",
        "POST",
        "/v1/echo",
        json.dumps({"message": TEXT}).encode(),
        "gzip",
        echo_pb2.EchoRequest(message=TEXT),
    ),
]


@dataclass
class Way:
    """A way from the client to the app: gRPC straight to it, or HTTP through one proxy process."""

    name: str
    port: int
    pid: int | None = None  # the proxy's, whose CPU the tables report; None for direct gRPC
    failures: Counter[str] = field(default_factory=Counter)
    encodings: Counter[str] = field(default_factory=Counter)  # Content-Encoding answered, per request kind run
    wire_bytes: list[int] = field(default_factory=list)

    @property
    def http(self) -> bool:
        return self.pid is not None


# ------------------------------------------------------------------------------------------ the processes


def echo_with_http_rules() -> descriptor_pb2.FileDescriptorSet:
    """The echo proto as the edge reads it: Echo bound to GET /v1/echo/{message} and POST /v1/echo."""

    def bind(file: descriptor_pb2.FileDescriptorProto) -> None:
        if file.package != "meshlet_api.echo.v1":
            return
        file.dependency.append("google/api/annotations.proto")
        echo = next(m for m in file.service[0].method if m.name == "Echo")
        rule = echo.options.Extensions[annotations_pb2.http]
        rule.get = "/v1/echo/{message}"
        rule.additional_bindings.add(post="/v1/echo", body="*")

    return descriptor_set(annotations_pb2.DESCRIPTOR, echo_pb2.DESCRIPTOR, edit=bind)


def start_edge(procs: Processes, folder: Path, agent: Agent) -> Way:
    descriptors = folder / "echo.pb"
    descriptors.write_bytes(echo_with_http_rules().SerializeToString())
    config = {
        "service": {"name": "edge"},
        "consul": {"address": agent.url},
        "tls": {"source": "off"},
        "edge": {"services": {ECHO_SERVICE: UPSTREAM}, "descriptor_sets": [str(descriptors)]},
    }
    path = write_config(folder / "edge.yaml", config)
    port, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "meshlet_edge", "--config", str(path), "--listen", f"127.0.0.1:{port}"]
    child = procs.start([*argv, "--admin-addr", f"127.0.0.1:{admin}"], name="edge")
    ready = f"http://127.0.0.1:{admin}/ready"
    wait_until(lambda: http_ok(ready) or not child.alive(), START_S, "the edge to turn ready")
    if not child.alive():
        raise RuntimeError(f"the edge exited at start:\n{child.output()}")
    return Way("edge", port, child.pid)


def start_minimal(procs: Processes, server: str, app_port: int) -> Way:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.minimal_transcoder", "--server", server]
    child = procs.start(
        [*argv, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{app_port}"], name=f"minimal-{server}"
    )
    wait_port(port, child, f"the minimal transcoder on {server}")
    return Way(f"minimal {server}", port, child.pid)


def available(server: str) -> bool:
    if server == "uvicorn":
        return all(importlib.util.find_spec(m) is not None for m in ("uvicorn", "httptools"))
    return server == "aiohttp"


# ------------------------------------------------------------------------------------------ measuring

Call = Callable[[], Awaitable[None]]


def caller(path: Way, kind: Kind, session: aiohttp.ClientSession, stub: echo_pb2_grpc.EchoStub) -> Call:
    if not path.http:

        async def grpc_call() -> None:
            try:
                await stub.Echo(kind.grpc_request, timeout=TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                path.failures[error.code().name] += 1

        return grpc_call

    url = f"http://127.0.0.1:{path.port}{kind.path}"
    headers = {"Accept-Encoding": kind.accept_encoding}
    if kind.body is not None:
        headers["Content-Type"] = "application/json"

    async def http_call() -> None:
        try:
            async with session.request(kind.method, url, data=kind.body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    path.failures[f"HTTP {response.status}"] += 1
                path.encodings[response.headers.get("Content-Encoding", "identity")] += 1
                if (length := response.headers.get("Content-Length")) is not None:
                    path.wire_bytes.append(int(length))
        except (TimeoutError, aiohttp.ClientError) as error:
            path.failures[type(error).__name__] += 1

    return http_call


@dataclass
class Cell:
    """What one path did for one kind of request."""

    opened: Result = field(default_factory=lambda: Result(latencies=[]))
    closed: dict[int, Result] = field(default_factory=dict)
    cpu_s: float = 0.0
    calls: int = 0  # open-loop requests, for CPU per 1,000
    closed_cpu_s: dict[int, float] = field(default_factory=dict)  # in flight -> CPU-seconds over those runs
    failures: Counter[str] = field(default_factory=Counter)
    encodings: Counter[str] = field(default_factory=Counter)
    wire_bytes: int | None = None

    def cpu_per_1000(self) -> float:
        return self.cpu_s / self.calls * 1000 if self.calls else 0.0

    def closed_cpu_per_1000(self, n: int) -> float:
        """CPU per 1,000 requests with `n` in flight: the proxy busy, so its idle cost does not count."""
        calls = self.closed[n].calls if n in self.closed else 0
        return self.closed_cpu_s.get(n, 0.0) / calls * 1000 if calls else 0.0


async def measure(paths: list[Way], app_port: int) -> dict[str, dict[str, Cell]]:
    """kind name -> path name -> what it measured (direct gRPC has no "POST gzip": no HTTP, no gzip)."""
    cells: dict[str, dict[str, Cell]] = {}
    connector = aiohttp.TCPConnector(limit=max(IN_FLIGHT) * 2)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True) as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{app_port}") as channel,
    ):
        stub = echo_pb2_grpc.EchoStub(channel)
        for kind in KINDS:
            here = [p for p in paths if p.http or kind.accept_encoding != "gzip"]
            calls = {p.name: caller(p, kind, session, stub) for p in here}
            for call in calls.values():  # connections, code paths, the edge's discovery
                for _ in range(WARMUP_CALLS):
                    await call()
                await closed_loop(call, max(IN_FLIGHT), 0.5)
            for path in here:
                path.failures.clear()
                path.encodings.clear()
                path.wire_bytes.clear()
            row = cells[kind.name] = {p.name: Cell() for p in here}
            for _ in range(ROUNDS):
                for path in here:
                    before = cpu_seconds(path.pid) if path.pid else 0.0
                    row[path.name].opened.merge(await open_loop(calls[path.name], RATE, DURATION_S))
                    if path.pid:
                        row[path.name].cpu_s += cpu_seconds(path.pid) - before
                    row[path.name].calls += int(RATE * DURATION_S)
            for n in IN_FLIGHT:
                for _ in range(ROUNDS):
                    for path in here:
                        before = cpu_seconds(path.pid) if path.pid else 0.0
                        row[path.name].closed.setdefault(n, Result(latencies=[])).merge(
                            await closed_loop(calls[path.name], n, DURATION_S)
                        )
                        if path.pid:
                            row[path.name].closed_cpu_s[n] = row[path.name].closed_cpu_s.get(n, 0.0) + (
                                cpu_seconds(path.pid) - before
                            )
            for path in here:
                cell = row[path.name]
                cell.failures, cell.encodings = Counter(path.failures), Counter(path.encodings)
                cell.wire_bytes = round(sum(path.wire_bytes) / len(path.wire_bytes)) if path.wire_bytes else None
    return cells


# ------------------------------------------------------------------------------------------ the tables


def _direct_p50(cells: dict[str, dict[str, Cell]], kind: str) -> float:
    """Direct gRPC's p50 for the same Echo (the POST's for "POST gzip", which has no gRPC counterpart)."""
    return (cells[kind].get("direct gRPC") or cells["POST"]["direct gRPC"]).opened.percentile(0.5)


def _added(cells: dict[str, dict[str, Cell]], name: str, kind: str) -> float:
    return cells[kind][name].opened.percentile(0.5) - _direct_p50(cells, kind)


def print_tables(cells: dict[str, dict[str, Cell]]) -> None:
    closed_heads = "".join(f"{f'rps@{n}':>9}" for n in IN_FLIGHT)
    busy_head = f"@{max(IN_FLIGHT)}"
    print(
        f"\n== meshlet-edge: unary Echo from HTTP/JSON, open loop {RATE:.0f}/s, {ROUNDS} x {DURATION_S:g} s per cell =="
    )
    print(
        f"{'request':<10} {'path':<16}{'p50':>8}{'p99':>8}{'+p50':>8}{closed_heads}{'CPU-s/1k':>10}{busy_head:>8}"
        f"{'answered':>10}{'bytes':>7}  failed"
    )
    for kind in KINDS:
        for name, cell in cells[kind.name].items():
            result = cell.opened
            added = "" if name == "direct gRPC" else f"{_added(cells, name, kind.name):+8.2f}"
            rps = "".join(f"{cell.closed[n].throughput:9.0f}" for n in IN_FLIGHT)
            busy = max(IN_FLIGHT)
            cpu = f"{cell.cpu_per_1000():10.3f}{cell.closed_cpu_per_1000(busy):8.3f}" if cell.closed_cpu_s else " " * 18
            answered = "/".join(cell.encodings) if cell.encodings else ("grpc" if name == "direct gRPC" else "-")
            size = f"{cell.wire_bytes:7d}" if cell.wire_bytes is not None else f"{'':>7}"
            failed = ", ".join(f"{n} {code}" for code, n in cell.failures.most_common()) or "0"
            mark = "*" if result.throughput < 0.95 * RATE else " "
            print(
                f"{kind.name:<10}{mark}{name:<16}{result.percentile(0.5):8.2f}{result.percentile(0.99):8.2f}{added:>8}"
                f"{rps}{cpu}{answered:>10}{size}  {failed}"
            )
        print()
    print("  ms; +p50: added over direct gRPC for the same Echo (POST's for POST gzip). * the path (or this client)")
    print("  kept below 95% of the open-loop rate: its latency is queueing. rps@N: requests/s, closed loop")
    print("  at N in flight. CPU-s/1k: CPU-seconds of the proxy process per 1,000 requests over the open-loop runs;")
    print(f"  @{max(IN_FLIGHT)}: the same over the closed-loop runs at {max(IN_FLIGHT)} in flight (the process busy).")
    print("  answered: the Content-Encoding of the answers; bytes: their Content-Length (as sent on the wire).")
    print_target(cells)
    print_libraries(cells)


def print_target(cells: dict[str, dict[str, Cell]]) -> None:
    floors = [name for name in (f"minimal {s}" for s in SERVERS) if name in cells["GET"]]
    if "edge" not in cells["GET"] or not floors:
        return
    print(f"\n== The edge against the minimal transcoders (target: within {TARGET}x the added p50 and the CPU) ==")
    busy = max(IN_FLIGHT)
    heads = f"{'edge +p50':>10}{'floor +p50':>11}{'ratio':>7}{'edge CPU':>10}{'floor CPU':>10}{'ratio':>7}"
    heads += f"{f'CPU@{busy}':>9}"
    print(f"{'request':<10} {'floor':<16}{heads}  verdict")
    for kind in KINDS:
        row = cells[kind.name]
        edge_p50, edge_cpu = _added(cells, "edge", kind.name), row["edge"].cpu_per_1000()
        for floor in floors:
            floor_p50, floor_cpu = _added(cells, floor, kind.name), row[floor].cpu_per_1000()
            p50_ratio = edge_p50 / floor_p50 if floor_p50 > 0 else float("nan")
            cpu_ratio = edge_cpu / floor_cpu if floor_cpu > 0 else float("nan")
            met = p50_ratio <= TARGET and cpu_ratio <= TARGET
            floor_busy = row[floor].closed_cpu_per_1000(busy)
            busy_ratio = row["edge"].closed_cpu_per_1000(busy) / floor_busy if floor_busy > 0 else float("nan")
            print(
                f"{kind.name:<10} {floor:<16}{edge_p50:10.2f}{floor_p50:11.2f}{p50_ratio:6.2f}x{edge_cpu:10.3f}"
                f"{floor_cpu:10.3f}{cpu_ratio:6.2f}x{busy_ratio:8.2f}x  {'met' if met else 'missed'}"
            )
    print("  verdict: both ratios of the open-loop columns within the target. The target compares with the minimal")
    print(
        "  transcoder on the edge's own library (aiohttp); the uvicorn rows show what a change of library would move."
    )


def print_libraries(cells: dict[str, dict[str, Cell]]) -> None:
    if not {"minimal aiohttp", "minimal uvicorn"} <= set(cells["GET"]):
        return
    print("\n== The HTTP server library alone: the same minimal transcoder on aiohttp and on uvicorn + httptools ==")
    heads = "".join(f"{f'rps@{n}':>14}" for n in IN_FLIGHT)
    print(f"{'request':<10}{'+p50 aiohttp/uvicorn':>22}{f'CPU-s/1k@{max(IN_FLIGHT)} aiohttp/uvicorn':>30}{heads}")
    for kind in KINDS:
        row = cells[kind.name]
        a, u = row["minimal aiohttp"], row["minimal uvicorn"]
        rps = "".join(f"{a.closed[n].throughput:7.0f}/{u.closed[n].throughput:<6.0f}" for n in IN_FLIGHT)
        p50 = f"{_added(cells, 'minimal aiohttp', kind.name):.2f} / {_added(cells, 'minimal uvicorn', kind.name):.2f}"
        busy = max(IN_FLIGHT)
        cpu = f"{a.closed_cpu_per_1000(busy):.3f} / {u.closed_cpu_per_1000(busy):.3f}"
        print(f"{kind.name:<10}{p50:>22}{cpu:>30}{rps}")


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="meshlet-edge-bench-") as tmp, processes(Path(tmp)) as procs:
        folder = Path(tmp)
        app = start_plain_app(procs, "app")
        agent = start_dev_agent(procs)
        agent.client().agent.service.register(UPSTREAM, service_id="echo-1", address="127.0.0.1", port=app.port)
        paths = [Way("direct gRPC", app.port), start_edge(procs, folder, agent)]
        for server in SERVERS:
            if available(server):
                paths.append(start_minimal(procs, server, app.port))
            else:
                print(f"!! minimal {server} skipped: not installed (pip install uvicorn httptools)")
        cells = asyncio.run(measure(paths, app.port))
        print_tables(cells)


if __name__ == "__main__":
    main()
