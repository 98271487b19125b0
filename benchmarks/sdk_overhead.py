"""What the SDK costs per call: a unary echo through ``mesh.channel()`` (every policy on: deadline, bulkhead,
retry budget, P2C picker, breaker accounting; tracing off) next to a bare grpc.aio channel to the same server.

The server is a separate process (served through ``Mesh.serve``) registered in a dev agent. Closed loop at 1
and 32 calls in flight gives throughput and latency; an open loop at a fixed rate, with latency measured from
each call's scheduled start (no coordinated omission), gives percentiles under a steady load. Runs alternate
mesh and bare so that drift on a shared machine hits both.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from meshlet.config import load_config
from meshlet.mesh import Mesh
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.support.processes import free_port, http_answers, meshlet_argv, wait_until

DURATION_S = float(os.environ.get("BENCH_DURATION_S", "4"))
OPEN_LOOP_RATE = float(os.environ.get("BENCH_RATE", "500"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
REQUEST = echo_pb2.EchoRequest(message="x" * 64)

Call = Callable[[], Awaitable[object]]


@dataclass
class Result:
    calls: int = 0
    seconds: float = 0.0
    latencies: list[float] | None = None

    def merge(self, other: Result) -> None:
        self.calls += other.calls
        self.seconds += other.seconds
        self.latencies = (self.latencies or []) + (other.latencies or [])

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies or [0.0])
        return data[min(len(data) - 1, int(q * len(data)))] * 1000


async def closed_loop(call: Call, concurrency: int, duration_s: float) -> Result:
    latencies: list[float] = []
    stop = time.perf_counter() + duration_s

    async def worker() -> None:
        while (start := time.perf_counter()) < stop:
            await call()
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(len(latencies), time.perf_counter() - began, latencies)


async def open_loop(call: Call, rate: float, duration_s: float) -> Result:
    """Start calls on a fixed schedule; latency counts from when each call was due, not when it began."""
    latencies: list[float] = []
    interval = 1.0 / rate
    began = time.perf_counter()
    count = int(duration_s * rate)
    tasks = []

    async def one(due: float) -> None:
        await call()
        latencies.append(time.perf_counter() - due)

    for i in range(count):
        due = began + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    return Result(len(latencies), time.perf_counter() - began, latencies)


async def run(agent_url: str, server_port: int) -> None:
    config = load_config(None, env={"CONSUL_HTTP_ADDR": agent_url})
    async with Mesh(config) as mesh, grpc.aio.insecure_channel(f"127.0.0.1:{server_port}") as bare_channel:
        mesh_stub = echo_pb2_grpc.EchoStub(mesh.channel("bench-echo"))
        bare_stub = echo_pb2_grpc.EchoStub(bare_channel)
        calls: dict[str, Call] = {
            "mesh.channel()": lambda: mesh_stub.Echo(REQUEST, timeout=5),
            "bare grpc.aio": lambda: bare_stub.Echo(REQUEST, timeout=5),
        }
        for call in calls.values():  # warm up: discovery, connections, code paths
            for _ in range(300):
                await call()
        scenarios: dict[str, Callable[[Call], Awaitable[Result]]] = {
            "closed loop, 1 in flight": lambda c: closed_loop(c, 1, DURATION_S),
            "closed loop, 32 in flight": lambda c: closed_loop(c, 32, DURATION_S),
            f"open loop, {OPEN_LOOP_RATE:.0f} calls/s": lambda c: open_loop(c, OPEN_LOOP_RATE, DURATION_S),
        }
        print(
            f"\n== SDK overhead: unary echo, 64 B, {ROUNDS} x {DURATION_S:.0f} s per cell, policies on, tracing off =="
        )
        print(f"{'scenario':<30}{'path':<17}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}{'p50 vs bare':>14}{'tput':>8}")
        for scenario, runner in scenarios.items():
            results = {name: Result(latencies=[]) for name in calls}
            for _ in range(ROUNDS):
                for name, call in calls.items():
                    results[name].merge(await runner(call))
            bare = results["bare grpc.aio"]
            for name, result in results.items():
                delta = (result.percentile(0.5) - bare.percentile(0.5)) * 1000
                ratio = result.throughput / bare.throughput if bare.throughput else 0.0
                extra = f"{delta:+10.0f} us" if name != "bare grpc.aio" else ""
                tput = f"{ratio:7.1%}" if name != "bare grpc.aio" else ""
                print(
                    f"{scenario:<30}{name:<17}{result.percentile(0.5):9.3f}{result.percentile(0.99):9.3f}"
                    f"{result.throughput:10.0f}{extra:>14}{tput:>8}"
                )


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body: bytes = response.read()
            return body
    except OSError:
        return b""


def main() -> None:
    agent_port = free_port()
    agent_url = f"http://127.0.0.1:{agent_port}"
    server_port = free_port()
    agent = subprocess.Popen(
        meshlet_argv("dev-agent", "--http-addr", f"127.0.0.1:{agent_port}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = None
    try:
        wait_until(lambda: http_answers(f"{agent_url}/v1/status/leader"), 15, "the dev agent")
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.support.echo_server", "--name", "bench", "--port", str(server_port)],
            env={**os.environ, "CONSUL_HTTP_ADDR": agent_url, "MESHLET_SERVICE__NAME": "bench-echo"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        passing = f"{agent_url}/v1/health/service/bench-echo?passing"
        wait_until(lambda: str(server_port).encode() in _get(passing), 20, "the echo server to pass its check")
        asyncio.run(run(agent_url, server_port))
    finally:
        for process in (server, agent):
            if process is not None:
                process.terminate()
                process.wait(15)


if __name__ == "__main__":
    main()
