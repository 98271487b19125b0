"""A long run at a fixed rate while faults cycle: does anything grow? ``make soak`` (30 minutes), or
``python -m benchmarks.soak --minutes N``.

Two paths are called at ``--rate`` calls/s each, open loop (a call every 1/rate s, none waiting for the last):

    sdk       this process's Mesh -> echo-1 | echo-2   (tests.support.echo_server: SDK servers in Consul)
    sidecars  plain client -> sidecar A ==mTLS==> sidecar B -> plain app   (benchmarks.sidecar_pair)

Every ``--fault-every`` seconds the next fault of the cycle plays: echo-2 is SIGKILLed and started again on its
port; echo-1 reports NOT_SERVING for half a period, then SERVING (its TTL check flaps in Consul); the app behind
sidecar B is SIGKILLed and started again. Each sample (every ``--sample-every`` s, a minute by default) records
the calls, errors and latency since the last one, and the resources of the caller (RSS, open descriptors,
asyncio tasks, threads) and of each sidecar (RSS, descriptors, threads, from /proc). After the warm-up, the
slope of each resource per minute is printed (least squares): the target is none. Nothing is asserted here;
tests/integration/test_soak.py runs two minutes of it and checks the descriptor and task counts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from benchmarks.sidecar_pair import CALLER, start_echo_pair
from meshlet.config import load_config
from meshlet.errors import error_info
from meshlet.mesh import Mesh
from meshlet.security.dev_ca import init_ca, issue
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.support.agents import start_dev_agent
from tests.support.processes import Child, Processes, free_port, processes, wait_until
from tests.support.sidecars import SidecarProcess, start_plain_app

PAGE = os.sysconf("SC_PAGE_SIZE")
ECHO_SERVICE = "soak-echo"
UPSTREAM = "soak-b"
CALL_TIMEOUT_S = 5.0
START_S = 30.0  # a bound on waiting for a process to serve, never a measurement
REQUEST_PAYLOAD = b"x" * 256


@dataclass(frozen=True)
class Resources:
    rss_mib: float
    fds: int
    threads: int


def resources(pid: int | str = "self") -> Resources:
    """A process's resident memory, open descriptors and threads, from /proc."""
    with open(f"/proc/{pid}/statm") as statm:
        rss_mib = int(statm.read().split()[1]) * PAGE / 2**20
    threads = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    return Resources(rss_mib, len(os.listdir(f"/proc/{pid}/fd")), threads)


@dataclass(frozen=True)
class Sample:
    minute: float
    calls: int
    errors: collections.Counter[str]
    p50_ms: float
    p99_ms: float
    rss_mib: float
    fds: int
    tasks: int
    threads: int
    a_rss_mib: float
    a_fds: int
    a_threads: int
    b_rss_mib: float
    b_fds: int
    b_threads: int


GROWTH = ("rss_mib", "fds", "tasks", "threads", "a_rss_mib", "a_fds", "a_threads", "b_rss_mib", "b_fds", "b_threads")
"""The columns that must not grow."""


@dataclass
class Window:
    """What the calls did since the last sample."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)  # "path CODE REASON" -> calls

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


class Rig:
    """The processes of the run and the faults played on them."""

    def __init__(self, procs: Processes, folder: Path) -> None:
        self.procs, self.folder = procs, folder
        self.agent = start_dev_agent(procs)
        certs = folder / "certs"
        init_ca(certs)
        issue(certs, CALLER)
        issue(certs, UPSTREAM)
        self.echo_ports = {name: free_port() for name in ("echo-1", "echo-2")}
        self.echoes = {name: self.start_echo(name) for name in self.echo_ports}
        self.app_port = free_port()
        self.app = start_plain_app(procs, "app", self.app_port, with_reflection=True).child
        self.a, self.b = start_echo_pair(
            procs, folder, certs, self.agent, f"127.0.0.1:{self.app_port}", upstream=UPSTREAM, label="soak"
        )

    def start_echo(self, name: str) -> Child:
        port = self.echo_ports[name]
        argv = [sys.executable, "-m", "tests.support.echo_server", "--name", name, "--port", str(port)]
        env = {
            "CONSUL_HTTP_ADDR": self.agent.url,
            "MESHLET_SERVICE__NAME": ECHO_SERVICE,
            "MESHLET_SERVICE__CHECK_TTL": "1s",
            "MESHLET_SERVICE__DRAIN_GRACE": "2s",
        }
        child = self.procs.start(argv, name=name, env=env)
        wait_until(lambda: self.passing(port), START_S, f"{name} passing in the agent")
        return child

    def passing(self, port: int) -> bool:
        try:
            return any(entry["Service"]["Port"] == port for entry in self.agent.passing(ECHO_SERVICE))
        except OSError:
            return False

    def forget(self, child: Child) -> None:
        """Stop tracking a child that has died, so a long run does not keep every Popen it ever made."""
        child.stop()
        self.procs.children.remove(child)

    async def restart_echo(self) -> None:
        old = self.echoes["echo-2"]
        old.signal(signal.SIGKILL)
        await asyncio.to_thread(self.forget, old)
        self.echoes["echo-2"] = await asyncio.to_thread(self.start_echo, "echo-2")

    async def flap_health(self, hold_s: float) -> None:
        target = f"127.0.0.1:{self.echo_ports['echo-1']}"
        async with grpc.aio.insecure_channel(target) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            await stub.Echo(echo_pb2.EchoRequest(), metadata=(("x-echo-set-health", "NOT_SERVING"),), timeout=5)
            await asyncio.sleep(hold_s)
            await stub.Echo(echo_pb2.EchoRequest(), metadata=(("x-echo-set-health", "SERVING"),), timeout=5)

    async def restart_app(self) -> None:
        self.app.signal(signal.SIGKILL)
        await asyncio.to_thread(self.forget, self.app)
        started = await asyncio.to_thread(start_plain_app, self.procs, "app", self.app_port, with_reflection=True)
        self.app = started.child

    async def faults(self, every_s: float) -> None:
        """Play the cycle until cancelled."""
        cycle = itertools.cycle(
            (self.restart_echo, lambda: self.flap_health(every_s / 2), self.restart_app),
        )
        for fault in cycle:
            await asyncio.sleep(every_s)
            with contextlib.suppress(grpc.aio.AioRpcError):  # a flap that met the instance restarting: next one
                await fault()


async def fixed_rate(
    path: str, call: Callable[[], Awaitable[object]], rate_per_s: float, window: Callable[[], Window]
) -> None:
    """Start `call` every 1/rate s until cancelled; each records its latency (or an error) in the current window."""

    async def one() -> None:
        started = time.perf_counter()
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            info = error_info(error)
            window().errors[f"{path} {error.code().name} {info.reason if info else ''}".rstrip()] += 1
        else:
            window().latencies_ms.append((time.perf_counter() - started) * 1000)

    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task[None]] = set()
    due = loop.time()
    try:
        while True:
            task = asyncio.create_task(one())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            due += 1 / rate_per_s
            await asyncio.sleep(max(0.0, due - loop.time()))
    finally:
        await asyncio.gather(*in_flight, return_exceptions=True)


async def soak(
    folder: Path,
    seconds: float,
    *,
    rate_per_s: float = 50.0,
    sample_every_s: float = 60.0,
    fault_every_s: float = 20.0,
    on_sample: Callable[[Sample], None] = lambda _s: None,
) -> list[Sample]:
    """Run the soak for `seconds`; returns one Sample per `sample_every_s`."""
    samples: list[Sample] = []
    with processes(folder) as procs:
        rig = await asyncio.to_thread(Rig, procs, folder)
        mesh = Mesh(load_config(None, env={"CONSUL_HTTP_ADDR": rig.agent.url}))
        sdk_stub = echo_pb2_grpc.EchoStub(mesh.channel(ECHO_SERVICE))
        plain = grpc.aio.insecure_channel(f"127.0.0.1:{rig.a.outbound_port}")
        sidecar_stub = echo_pb2_grpc.EchoStub(plain)
        request = echo_pb2.EchoRequest(message="soak", payload=REQUEST_PAYLOAD)
        current = Window()

        def calls(stub: echo_pb2_grpc.EchoStub) -> Callable[[], Awaitable[object]]:
            return lambda: stub.Echo(request, timeout=CALL_TIMEOUT_S)

        loops = [
            asyncio.create_task(fixed_rate(path, calls(stub), rate_per_s, lambda: current))
            for path, stub in (("sdk", sdk_stub), ("sidecars", sidecar_stub))
        ]
        loops.append(asyncio.create_task(rig.faults(fault_every_s)))
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds:
                await asyncio.sleep(min(sample_every_s, seconds - (time.monotonic() - started)))
                window, current = current, Window()
                sample = take_sample((time.monotonic() - started) / 60, window, rig.a, rig.b)
                samples.append(sample)
                on_sample(sample)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await plain.close()
            await mesh.close()
    return samples


def take_sample(minute: float, window: Window, a: SidecarProcess, b: SidecarProcess) -> Sample:
    own, side_a, side_b = resources(), resources(a.child.pid), resources(b.child.pid)
    return Sample(
        minute=minute,
        calls=len(window.latencies_ms) + window.errors.total(),
        errors=window.errors,
        p50_ms=window.percentile(0.5),
        p99_ms=window.percentile(0.99),
        rss_mib=own.rss_mib,
        fds=own.fds,
        tasks=len(asyncio.all_tasks()),
        threads=own.threads,
        a_rss_mib=side_a.rss_mib,
        a_fds=side_a.fds,
        a_threads=side_a.threads,
        b_rss_mib=side_b.rss_mib,
        b_fds=side_b.fds,
        b_threads=side_b.threads,
    )


def slope_per_minute(samples: list[Sample], column: str) -> float:
    """The least-squares slope of `column` against time, per minute (0 with fewer than two samples)."""
    if len(samples) < 2:
        return 0.0
    xs = [s.minute for s in samples]
    ys = [float(getattr(s, column)) for s in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0


HEADER = (
    "| min | calls | errors sdk/sidecars | p50 ms | p99 ms | RSS MiB | fds | tasks | threads "
    "| A RSS | A fds | A thr | B RSS | B fds | B thr |"
)


def errors_by_path(s: Sample) -> str:
    by_path = collections.Counter[str]()
    for key, count in s.errors.items():
        by_path[key.split()[0]] += count
    return f"{by_path['sdk']}/{by_path['sidecars']}"


def format_sample(s: Sample) -> str:
    return (
        f"| {s.minute:.1f} | {s.calls} | {errors_by_path(s)} | {s.p50_ms:.1f} | {s.p99_ms:.1f} | {s.rss_mib:.1f} "
        f"| {s.fds} | {s.tasks} | {s.threads} | {s.a_rss_mib:.1f} | {s.a_fds} | {s.a_threads} | {s.b_rss_mib:.1f} "
        f"| {s.b_fds} | {s.b_threads} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=50.0, help="calls/s on each path")
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes left out of the slopes")
    args = parser.parse_args(argv)
    print(f"soak: {args.minutes:g} min at {args.rate:g} calls/s per path, a fault every {args.fault_every:g} s")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    with tempfile.TemporaryDirectory(prefix="meshlet-soak-") as folder:
        samples = asyncio.run(
            soak(
                Path(folder),
                args.minutes * 60,
                rate_per_s=args.rate,
                sample_every_s=args.sample_every,
                fault_every_s=args.fault_every,
                on_sample=lambda s: print(format_sample(s), flush=True),
            )
        )
    settled = [s for s in samples if s.minute > args.warmup]
    print(f"\nslope per minute after {args.warmup:g} min of warm-up ({len(settled)} samples; target: 0):")
    for column in GROWTH:
        print(f"  {column:10} {slope_per_minute(settled, column):+.3f}")
    total = sum(s.calls for s in samples)
    errors: collections.Counter[str] = collections.Counter()
    for s in samples:
        errors.update(s.errors)
    print(f"calls {total}, errors {errors.total()} ({errors.total() / max(1, total):.2%}): {dict(errors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
