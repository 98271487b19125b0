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
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshlet.config import load_config
from meshlet.mesh import Mesh
from meshlet.security.dev_ca import init_ca, issue
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
    cpu_s: float = 0.0  # this (client) process's CPU time over the run

    def merge(self, other: Result) -> None:
        self.calls += other.calls
        self.seconds += other.seconds
        self.latencies = (self.latencies or []) + (other.latencies or [])
        self.cpu_s += other.cpu_s

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_s / self.calls * 1e6 if self.calls else 0.0

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

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(len(latencies), time.perf_counter() - began, latencies, time.process_time() - cpu)


async def paired(calls: dict[str, Call], duration_s: float) -> dict[str, Result]:
    """One call of each path in turn, one in flight: drift on a shared machine hits both paths alike."""
    results = {name: Result(latencies=[]) for name in calls}
    stop = time.perf_counter() + duration_s
    while time.perf_counter() < stop:
        for name, call in calls.items():
            began, cpu = time.perf_counter(), time.process_time()
            await call()
            result = results[name]
            result.latencies.append(time.perf_counter() - began)  # type: ignore[union-attr]
            result.calls += 1
            result.seconds += time.perf_counter() - began
            result.cpu_s += time.process_time() - cpu
    return results


async def open_loop(call: Call, rate: float, duration_s: float) -> Result:
    """Start calls on a fixed schedule; latency counts from when each call was due, not when it began."""
    latencies: list[float] = []
    interval = 1.0 / rate
    began, cpu = time.perf_counter(), time.process_time()
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
    return Result(len(latencies), time.perf_counter() - began, latencies, time.process_time() - cpu)


@dataclass(frozen=True)
class Setup:
    """One table: plaintext, or mTLS with the same certificates on both paths."""

    title: str
    service: str
    port: int
    tls_env: dict[str, str]  # the mesh's tls.* settings, as MESHLET_TLS__* variables
    bare_credentials: grpc.ChannelCredentials | None = None
    bare_options: tuple[tuple[str, str], ...] = ()


def bare_channel(setup: Setup) -> grpc.aio.Channel:
    target = f"127.0.0.1:{setup.port}"
    if setup.bare_credentials is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, setup.bare_credentials, options=setup.bare_options)


async def run(agent_url: str, setup: Setup) -> None:
    env = {"CONSUL_HTTP_ADDR": agent_url, **setup.tls_env}
    config = load_config(None, env=env, overrides={"service.name": "bench-client"} if setup.tls_env else None)
    async with Mesh(config) as mesh, bare_channel(setup) as bare:
        mesh_stub = echo_pb2_grpc.EchoStub(mesh.channel(setup.service))
        bare_stub = echo_pb2_grpc.EchoStub(bare)
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
        print(f"\n== SDK overhead, {setup.title}: unary echo, 64 B, {ROUNDS} x {DURATION_S:.0f} s per cell ==")
        print(
            f"{'scenario':<30}{'path':<17}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}{'p50 vs bare':>14}{'tput':>8}"
            f"{'client CPU/call':>17}"
        )
        tables: dict[str, dict[str, Result]] = {"paired, 1 in flight": await paired(calls, DURATION_S * ROUNDS)}
        for scenario, runner in scenarios.items():
            results = tables[scenario] = {name: Result(latencies=[]) for name in calls}
            for _ in range(ROUNDS):
                for name, call in calls.items():
                    results[name].merge(await runner(call))
        for scenario, results in tables.items():
            bare_result = results["bare grpc.aio"]
            for name, result in results.items():
                delta = (result.percentile(0.5) - bare_result.percentile(0.5)) * 1000
                ratio = result.throughput / bare_result.throughput if bare_result.throughput else 0.0
                extra = f"{delta:+10.0f} us" if name != "bare grpc.aio" else ""
                tput = f"{ratio:7.1%}" if name != "bare grpc.aio" else ""
                print(
                    f"{scenario:<30}{name:<17}{result.percentile(0.5):9.3f}{result.percentile(0.99):9.3f}"
                    f"{result.throughput:10.0f}{extra:>14}{tput:>8}{result.cpu_us_per_call:14.0f} us"
                )


def start_server(agent_url: str, service: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.echo_server", "--name", service, "--port", str(port)],
        env={**os.environ, "CONSUL_HTTP_ADDR": agent_url, "MESHLET_SERVICE__NAME": service, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def tls_setup(certs: Path, port: int) -> tuple[Setup, dict[str, str]]:
    """A dev CA, a server certificate and a client certificate; the same files serve the mesh and the bare path."""
    init_ca(certs)
    server, client = issue(certs, "bench-echo-tls"), issue(certs, "bench-client")
    ca = (certs / "ca.crt").read_bytes()
    server_env = {
        "MESHLET_TLS__SOURCE": "files",
        "MESHLET_TLS__CERT": str(server.cert),
        "MESHLET_TLS__KEY": str(server.key),
        "MESHLET_TLS__CA": str(certs / "ca.crt"),
    }
    client_env = {**server_env, "MESHLET_TLS__CERT": str(client.cert), "MESHLET_TLS__KEY": str(client.key)}
    credentials = grpc.ssl_channel_credentials(ca, client.key.read_bytes(), client.cert.read_bytes())
    override = (("grpc.ssl_target_name_override", server.identity.dns_name),)
    return Setup("mTLS (same certificates on both paths)", "bench-echo-tls", port, client_env, credentials, override), (
        server_env
    )


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body: bytes = response.read()
            return body
    except OSError:
        return b""


def wait_passing(agent_url: str, setup: Setup) -> None:
    passing = f"{agent_url}/v1/health/service/{setup.service}?passing"
    wait_until(lambda: str(setup.port).encode() in _get(passing), 20, f"{setup.service} to pass its check")


def main() -> None:
    agent_port = free_port()
    agent_url = f"http://127.0.0.1:{agent_port}"
    agent = subprocess.Popen(
        meshlet_argv("dev-agent", "--http-addr", f"127.0.0.1:{agent_port}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers: list[subprocess.Popen[bytes]] = []
    try:
        wait_until(lambda: http_answers(f"{agent_url}/v1/status/leader"), 15, "the dev agent")
        with tempfile.TemporaryDirectory() as certs:
            plain = Setup("plaintext, policies on, tracing off", "bench-echo", free_port(), {})
            secure, server_env = tls_setup(Path(certs), free_port())
            servers.append(start_server(agent_url, plain.service, plain.port, {}))
            servers.append(start_server(agent_url, secure.service, secure.port, server_env))
            for setup in (plain, secure):
                wait_passing(agent_url, setup)
            for setup in (plain, secure):
                asyncio.run(run(agent_url, setup))
    finally:
        for process in (*servers, agent):
            process.terminate()
            process.wait(15)


if __name__ == "__main__":
    main()
