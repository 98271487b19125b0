"""What two meshlet sidecars add to a call, next to the floor for a Python proxy and next to nginx, in one run.

A unary Echo with a 1 KB payload, from a plain grpc.aio client in this process, along four paths to one plain
app (``tests.support.plain_app``, no meshlet inside):

    direct     client -> app
    meshlet    client -> sidecar A (outbound, route map) ==mTLS==> sidecar B (inbound, intentions) -> app
               (the sidecars on their default loop: uvloop where it is installed)
    meshlet asyncio  the same pair on asyncio's own loop (MESHLET_LOOP=asyncio): what uvloop saves
    raw pair   client -> raw proxy 1 ==mTLS==> raw proxy 2 -> app   (benchmarks/raw_proxy.py, no policies)
    raw unary  the same pair serving every method as unary (the floor for the sidecar's unary fast path)
    L4 in      client -> sidecar A ==mTLS==> sidecar B splicing at L4 (sidecar.inbound_mode: l4) -> app
    nginx      client -> nginx 1 (grpc_pass grpcs://) ==mTLS==> nginx 2 (ssl_verify_client on) -> app

The app serves reflection, so the sidecars learn that Echo is unary during the warm-up and serve it on their
unary fast path (the generic stream-stream handler before that, and for any method they do not know). The
proxied paths share one dev CA and its certificates. Open loop at fixed rates (calls sent on a fixed
schedule, latency counted from when each call was due, so a slow path cannot slow its own load: no
coordinated omission) gives percentiles and what each path adds over direct; closed loop at 1 and 32 in flight
gives throughput. Each proxy process's RSS and CPU come from /proc (utime+stime deltas over the open-loop
runs; for nginx, master and workers summed). Runs alternate paths within each scenario, so drift on a shared
machine hits all of them alike. Nothing is asserted: the tables put the numbers beside the issue's bars.

Knobs: BENCH_SIDECAR_DURATION_S (per cell, default 4), BENCH_SIDECAR_ROUNDS (default 2),
BENCH_SIDECAR_RATES (default "200,500,1000"), BENCH_SIDECAR_IN_FLIGHT (default "1,32"), BENCH_SIDECAR_NGINX=0 to
skip nginx, BENCH_SIDECAR_L4=0 to skip the pair whose inbound hop splices at L4, BENCH_SIDECAR_ASYNCIO=0 to
skip the pair on asyncio's loop, BENCH_SIDECAR_BASELINE=DIR to
add a pair of sidecars run from another checkout of this repository (a ``git worktree`` of an older commit, say)
as the path "meshlet@base", measured alternately with the others.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from benchmarks.sdk_overhead import Result, closed_loop, open_loop
from benchmarks.sidecar_pair import CALLER, start_echo_pair
from meshlet.security.dev_ca import IssuedCert, init_ca, issue
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Child, Processes, free_port, processes, wait_until
from tests.support.sidecars import start_plain_app

DURATION_S = float(os.environ.get("BENCH_SIDECAR_DURATION_S", "4"))
ROUNDS = int(os.environ.get("BENCH_SIDECAR_ROUNDS", "2"))
# 200/s sits below what a Python proxy pair sustains on a 2-core machine; 500 and 1,000 are the issue's rates.
RATES = [float(r) for r in os.environ.get("BENCH_SIDECAR_RATES", "200,500,1000").split(",")]
IN_FLIGHT = [int(n) for n in os.environ.get("BENCH_SIDECAR_IN_FLIGHT", "1,32").split(",")]
WITH_NGINX = os.environ.get("BENCH_SIDECAR_NGINX", "1") != "0"
BASELINE = os.environ.get("BENCH_SIDECAR_BASELINE", "")
WITH_L4 = os.environ.get("BENCH_SIDECAR_L4", "1") != "0"
WITH_ASYNCIO = os.environ.get("BENCH_SIDECAR_ASYNCIO", "1") != "0"

Env = dict[str, str] | None
TRUST_DOMAIN = "meshlet.bench"
REQUEST = echo_pb2.EchoRequest(message="bench", payload=b"x" * 1024)
CALL_TIMEOUT_S = 5.0
WARMUP_CALLS = 300
START_S = 30.0  # a bound on waiting for a process to serve, never a measurement
NGINX_TEMPLATES = Path(__file__).parent / "nginx"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# The issue's published bars (issue 6, "Performance").
DAPR = (1.40, 2.10)  # Dapr 1.0, two sidecars at ~1,000 rps: added p90, p99 (ms)
ISTIO = (0.23, 0.30)  # Istio 1.20, same
HOP_RATIO_TARGET = 1.15  # each sidecar hop within 1.15x the minimal proxy's added p50 and CPU per call
CPU_TARGET = 0.45  # CPU-s per 1,000 calls per sidecar
IDLE_RSS_TARGET_MIB = 45e6 / 2**20  # 45 MB


# ------------------------------------------------------------------------------------------ /proc readings


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _pids(pid: int, with_children: bool) -> list[int]:
    return [pid, *_children(pid)] if with_children else [pid]


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """utime + stime of `pid` (all its threads), plus its live children's when asked (nginx's workers)."""
    total = 0
    for one in _pids(pid, with_children):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), counted after the comm field
    return total / TICKS


def rss_mib(pid: int, with_children: bool = False) -> float:
    total = 0
    for one in _pids(pid, with_children):
        try:
            total += int(Path(f"/proc/{one}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total / 2**20


# ------------------------------------------------------------------------------------------ the paths


@dataclass
class ProxyProcess:
    """One proxy process whose RSS and CPU the tables report."""

    name: str
    pid: int
    with_children: bool = False
    idle_rss: float = 0.0
    loaded_rss: float = 0.0
    cpu_s: dict[float, float] = field(default_factory=dict)  # open-loop rate -> CPU-seconds spent over its runs

    def cpu(self) -> float:
        return cpu_seconds(self.pid, self.with_children)

    def rss(self) -> float:
        return rss_mib(self.pid, self.with_children)


@dataclass
class Route:
    """A way from the client to the app: where to dial, how, and the proxies on the way."""

    name: str
    port: int
    proxies: list[ProxyProcess] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # the status code of each failed call, in order
    errors: dict[float, Counter[str]] = field(default_factory=dict)  # open-loop rate -> failures in its runs
    open_calls: dict[float, int] = field(default_factory=dict)
    channel: grpc.aio.Channel | None = None

    def __repr__(self) -> str:
        hops = " -> ".join(p.name for p in self.proxies) or "no proxy"
        return f"<Path {self.name} :{self.port} via {hops}>"


def wait_port(port: int, child: Child, what: str) -> None:
    def answers() -> bool:
        if not child.alive():
            return True
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(answers, START_S, what)
    if not child.alive():
        raise RuntimeError(f"{what}: exited at start:\n{child.output()}")


# Each meshlet pair: its upstream's name in Consul (a certificate of its own) and the label of its processes.
PAIRS = {
    "meshlet": ("b-svc", "sidecar"),
    "meshlet asyncio": ("b-svc-asyncio", "asyncio"),
    "meshlet@base": ("b-svc-base", "base"),
    "meshlet L4 in": ("b-svc-l4", "L4"),
}


def start_meshlet(
    procs: Processes, folder: Path, certs: Path, app: str, agent: Agent, name: str = "meshlet", env: Env = None
) -> Route:
    """Sidecar B beside the app and sidecar A routing Echo to it, every policy on (mTLS, intentions, a rate
    limit that never bites, retries, breakers). "meshlet@base" runs another checkout's code (`env`); "meshlet L4
    in" has sidecar B splice at L4 (``sidecar.inbound_mode: l4``), so without the rate limit, which l4 cannot do.
    Each pair has an upstream name of its own, so pairs never mix."""
    upstream, label = PAIRS[name]
    l4 = name == "meshlet L4 in"
    b_config = {
        "authz": {"default": "deny", "rules": [{"from": CALLER, "to": upstream, "action": "allow"}]},
        **({"sidecar": {"inbound_mode": "l4"}} if l4 else {"rate_limit": {"per_caller": {"rate_per_s": 1e6}}}),
    }
    a, b = start_echo_pair(procs, folder, certs, agent, app, upstream=upstream, label=label, b_config=b_config, env=env)
    proxies = [ProxyProcess(f"{label} A", a.child.pid), ProxyProcess(f"{label} B", b.child.pid)]
    return Route(name, a.outbound_port, proxies)


def baseline_env(checkout: Path, folder: Path) -> dict[str, str]:
    """The environment that makes ``python -m meshlet_sidecar`` run `checkout`'s code instead of the installed
    (editable) package: a sitecustomize that drops the editable finder and puts the checkout first on the path."""
    shim = folder / "baseline-shim"
    shim.mkdir(exist_ok=True)
    paths = [str(checkout / part) for part in ("sdk", "sidecar", "protos")] + [str(checkout)]
    (shim / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
        f"sys.path[:0] = {paths!r}\n"
    )
    return {"PYTHONPATH": str(shim)}


def _tls_arg(cert: IssuedCert, ca: Path) -> str:
    return f"{cert.cert},{cert.key},{ca}"


def start_raw_pair(
    procs: Processes, a: IssuedCert, b: IssuedCert, ca: Path, app_port: int, *, unary: bool = False
) -> Route:
    port1, port2 = free_port(), free_port()
    argv = [sys.executable, "-m", "benchmarks.raw_proxy", *(["--unary"] if unary else [])]
    two = procs.start(
        [
            *argv,
            "--listen",
            f"127.0.0.1:{port2}",
            "--upstream",
            f"127.0.0.1:{app_port}",
            "--server-tls",
            _tls_arg(b, ca),
        ],
        name="raw-proxy-2",
    )
    one = procs.start(
        [
            *argv, "--listen", f"127.0.0.1:{port1}", "--upstream", f"127.0.0.1:{port2}",
            "--upstream-tls", _tls_arg(a, ca), "--upstream-name", b.identity.dns_name,
        ],
        name="raw-proxy-1",
    )  # fmt: skip
    for child, port in ((two, port2), (one, port1)):
        wait_port(port, child, "a raw proxy")
    if unary:
        return Route("raw unary pair", port1, [ProxyProcess("unary 1", one.pid), ProxyProcess("unary 2", two.pid)])
    return Route("raw proxy pair", port1, [ProxyProcess("proxy 1", one.pid), ProxyProcess("proxy 2", two.pid)])


def find_nginx() -> str | None:
    """nginx on PATH (or in /usr/sbin); else install Debian's nginx-light, running apt-get update if needed."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    print("nginx is not installed: apt-get install -y nginx-light ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}  # RUNLEVEL: do not start the service
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx-light"]
    for commands in ([install], [["apt-get", "update", "-q"], install]):
        try:
            if all(subprocess.run(c, env=env, capture_output=True, timeout=300).returncode == 0 for c in commands):
                break
        except (OSError, subprocess.TimeoutExpired):
            continue
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def start_nginx_pair(
    procs: Processes, nginx: str, folder: Path, a: IssuedCert, b: IssuedCert, ca: Path, app_port: int
) -> Route:
    port1, port2 = free_port(), free_port()
    common = {"dir": str(folder), "ca": str(ca)}
    inner = {**common, "port": port2, "upstream_port": app_port, "cert": b.cert, "key": b.key}
    edge = {**common, "port": port1, "upstream_port": port2, "cert": a.cert, "key": a.key}
    edge["upstream_name"] = b.identity.dns_name
    started: list[Child] = []
    for name, values, port in (("inner", inner, port2), ("edge", edge, port1)):
        text = (NGINX_TEMPLATES / f"{name}.conf.template").read_text()
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", str(value))
        conf = folder / f"{name}.conf"
        conf.write_text(text)
        child = procs.start([nginx, "-p", str(folder), "-c", str(conf), "-g", "daemon off;"], name=f"nginx-{name}")
        wait_port(port, child, f"nginx {name}")
        started.append(child)
    two, one = started
    return Route(
        "nginx pair",
        port1,
        [ProxyProcess("nginx 1", one.pid, with_children=True), ProxyProcess("nginx 2", two.pid, with_children=True)],
    )


# ------------------------------------------------------------------------------------------ measuring


def _caller(path: Route) -> Callable[[], Awaitable[object]]:
    assert path.channel is not None
    echo = echo_pb2_grpc.EchoStub(path.channel).Echo

    async def call() -> None:
        try:
            await echo(REQUEST, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            path.failures.append(error.code().name)

    return call


async def usable(path: Route) -> str | None:
    """None when the path echoes the payload back; else what went wrong."""
    assert path.channel is not None
    try:
        reply = await echo_pb2_grpc.EchoStub(path.channel).Echo(REQUEST, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name}: {error.details()}"
    return None if reply.payload == REQUEST.payload else "the reply's payload differs from the request's"


async def measure(paths: list[Route]) -> tuple[dict[float, dict[str, Result]], dict[int, dict[str, Result]]]:
    for path in paths:
        path.channel = grpc.aio.insecure_channel(f"127.0.0.1:{path.port}")
    try:
        for path in list(paths):
            problem = await usable(path)
            if problem:
                print(f"!! {path.name} does not work, left out: {problem}")
                paths.remove(path)
        callers = {path.name: _caller(path) for path in paths}
        for call in callers.values():  # connections, handshakes, code paths; nginx opens its keepalive pool
            for _ in range(WARMUP_CALLS):
                await call()
            await closed_loop(call, 32, 0.5)
        for path in paths:
            path.failures.clear()
        opened: dict[float, dict[str, Result]] = {rate: {p.name: Result(latencies=[]) for p in paths} for rate in RATES}
        closed: dict[int, dict[str, Result]] = {n: {p.name: Result(latencies=[]) for p in paths} for n in IN_FLIGHT}
        for rate in RATES:
            for _ in range(ROUNDS):
                for path in paths:
                    before, failed = [proxy.cpu() for proxy in path.proxies], len(path.failures)
                    opened[rate][path.name].merge(await open_loop(callers[path.name], rate, DURATION_S))
                    path.errors.setdefault(rate, Counter()).update(path.failures[failed:])
                    for proxy, was in zip(path.proxies, before, strict=True):
                        proxy.cpu_s[rate] = proxy.cpu_s.get(rate, 0.0) + proxy.cpu() - was
                    path.open_calls[rate] = path.open_calls.get(rate, 0) + int(rate * DURATION_S)
        for n in IN_FLIGHT:
            for _ in range(ROUNDS):
                for path in paths:
                    closed[n][path.name].merge(await closed_loop(callers[path.name], n, DURATION_S))
        return opened, closed
    finally:
        for path in paths:
            if path.channel is not None:
                await path.channel.close()


# ------------------------------------------------------------------------------------------ the tables


def _ms(result: Result) -> tuple[float, float, float]:
    return result.percentile(0.5), result.percentile(0.9), result.percentile(0.99)


def print_latency(opened: dict[float, dict[str, Result]], paths: list[Route]) -> None:
    print(f"\n== Open loop: unary Echo, 1 KB, {ROUNDS} x {DURATION_S:g} s per cell; latency from the scheduled send ==")
    head = f"{'rate':>6} {'path':<15}" + "".join(f"{h:>9}" for h in ("p50", "p90", "p99", "+p50", "+p90", "+p99"))
    print(f"{head}{'done/s':>8}  failed calls")
    for rate, results in opened.items():
        direct = _ms(results["direct"])
        for path in paths:
            result = results[path.name]
            p = _ms(result)
            added = "" if path.name == "direct" else "".join(f"{x - d:+9.2f}" for x, d in zip(p, direct, strict=True))
            mark = "*" if result.throughput < 0.95 * rate else " "
            failed = ", ".join(f"{n} {code}" for code, n in path.errors.get(rate, Counter()).most_common()) or "0"
            cells = "".join(f"{x:9.2f}" for x in p)
            print(f"{rate:6.0f} {path.name:<15}{cells}{added:>27}{result.throughput:7.0f}{mark}  {failed}")
        print()
    print("  ms; +: added over direct. done/s: calls completed per second of the run; * below 95% of the rate:")
    print("  the path is saturated, its latency is queueing (calls past their 5 s deadline: DEADLINE_EXCEEDED).")
    print("  Bars for two sidecars at ~1,000 rps, added p90 / p99:")
    print(f"    Dapr 1.0   +{DAPR[0]:.2f} / +{DAPR[1]:.2f} ms  (the stretch goal: the meshlet pair below it at 500/s)")
    print(f"    Istio 1.20 +{ISTIO[0]:.2f} / +{ISTIO[1]:.2f} ms")


def print_throughput(closed: dict[int, dict[str, Result]], paths: list[Route]) -> None:
    print(f"\n== Closed loop: unary Echo, 1 KB, {ROUNDS} x {DURATION_S:g} s per cell ==")
    print(f"{'in flight':>9} {'path':<16}{'calls/s':>9}{'vs direct':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for n, results in closed.items():
        direct = results["direct"].throughput
        for path in paths:
            r = results[path.name]
            ratio = f"{r.throughput / direct:10.1%}" if direct and path.name != "direct" else ""
            print(
                f"{n:>9} {path.name:<16}{r.throughput:9.0f}{ratio:>11}{r.percentile(0.5):9.2f}{r.percentile(0.99):9.2f}"
            )
        print()


def _per_1000(proxy: ProxyProcess, path: Route, rates: Iterable[float]) -> float:
    calls = sum(path.open_calls.get(rate, 0) for rate in rates)
    return sum(proxy.cpu_s.get(rate, 0.0) for rate in rates) / calls * 1000 if calls else 0.0


def print_resources(paths: list[Route]) -> None:
    print("\n== Each proxy process: RSS (MiB) and CPU-seconds per 1,000 calls over the open-loop runs ==")
    rates = "".join(f"{f'@{r:.0f}/s':>9}" for r in RATES)
    print(f"{'process':<12}{'idle RSS':>9}{'loaded':>8}{rates}{'all':>8}   bars")
    for path in paths:
        for proxy in path.proxies:
            per_rate = "".join(f"{_per_1000(proxy, path, [r]):9.3f}" for r in RATES)
            bar = ""
            if path.name.startswith("meshlet"):
                cpu, idle = _per_1000(proxy, path, RATES), proxy.idle_rss
                bar = (
                    f"CPU <= {CPU_TARGET} ({'met' if cpu <= CPU_TARGET else 'missed'}), "
                    f"idle RSS < 45 MB = {IDLE_RSS_TARGET_MIB:.1f} MiB "
                    f"({'met' if idle < IDLE_RSS_TARGET_MIB else 'missed'})"
                )
            print(
                f"{proxy.name:<12}{proxy.idle_rss:9.1f}{proxy.loaded_rss:8.1f}{per_rate}"
                f"{_per_1000(proxy, path, RATES):8.3f}   {bar}"
            )
    print("  nginx: master and worker summed (1 worker each). Issue's scale on this machine: minimal proxy,")
    print("  generic handler 0.57 CPU-s/1,000 calls and ~40 MB; typed unary handler 0.37; nginx 0.05.")
    print("  Dapr 1.0: 0.48 vCPU + 23 MB per 1,000 rps; Envoy 0.20 vCPU + 60 MB.")


def print_hops(opened: dict[float, dict[str, Result]], paths: list[Route]) -> None:
    by_name = {path.name: path for path in paths}
    if "raw proxy pair" not in by_name:
        return
    floors = [name for name in ("raw proxy pair", "raw unary pair") if name in by_name]
    print(f"\n== Per hop: each pair against the minimal raw pairs (target: within {HOP_RATIO_TARGET}x) ==")
    heads = "".join(f"{f'x {name[4:9]}':>10}{'CPU x':>8}" for name in floors)
    print(f"{'rate':>6} {'path':<16}{'added p50/hop':>14}{'CPU-s/1k/hop':>14}{heads}")
    for rate, results in opened.items():
        direct = results["direct"].percentile(0.5)
        rows: dict[str, tuple[float, float]] = {}
        for path in paths:
            if path.proxies:
                added = (results[path.name].percentile(0.5) - direct) / 2
                cpu = sum(_per_1000(proxy, path, [rate]) for proxy in path.proxies) / 2
                rows[path.name] = (added, cpu)
        for name, (added, cpu) in rows.items():
            ratios = ""
            for floor_name in floors:
                floor = rows[floor_name]
                ratios += f"{added / floor[0]:9.2f}x" if floor[0] > 0 else f"{'n/a':>10}"
                ratios += f"{cpu / floor[1]:7.2f}x" if floor[1] > 0 else f"{'n/a':>8}"
            print(f"{rate:6.0f} {name:<16}{added:14.3f}{cpu:14.3f}{ratios}")
        print()
    print("  x proxy: against the generic stream-stream raw pair; x unary: against the unary raw pair (the floor for")
    print(
        "  unary methods). At a rate where a pair is saturated (* above) the latency columns compare queues, not hops"
    )


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="meshlet-sidecar-bench-") as tmp, processes(Path(tmp)) as procs:
        folder = Path(tmp)
        certs = folder / "certs"
        init_ca(certs, TRUST_DOMAIN)
        a, b = issue(certs, "a-svc"), issue(certs, "b-svc")
        ca = certs / "ca.crt"
        app = start_plain_app(procs, "app", with_reflection=True)
        agent = start_dev_agent(procs)
        paths = [Route("direct", app.port)]
        paths.append(start_meshlet(procs, folder, certs, app.address, agent))
        if WITH_ASYNCIO:
            issue(certs, "b-svc-asyncio")
            on_asyncio = {"MESHLET_LOOP": "asyncio"}
            paths.append(start_meshlet(procs, folder, certs, app.address, agent, "meshlet asyncio", on_asyncio))
        if WITH_L4:
            issue(certs, "b-svc-l4")
            paths.append(start_meshlet(procs, folder, certs, app.address, agent, "meshlet L4 in"))
        if BASELINE:
            issue(certs, "b-svc-base")
            env = baseline_env(Path(BASELINE).resolve(), folder)
            paths.append(start_meshlet(procs, folder, certs, app.address, agent, "meshlet@base", env))
        paths.append(start_raw_pair(procs, a, b, ca, app.port))
        paths.append(start_raw_pair(procs, a, b, ca, app.port, unary=True))
        nginx = find_nginx() if WITH_NGINX else None
        if nginx is None:
            print("!! nginx skipped: " + ("BENCH_SIDECAR_NGINX=0" if not WITH_NGINX else "it could not be installed"))
        else:
            try:
                paths.append(start_nginx_pair(procs, nginx, folder, a, b, ca, app.port))
            except (RuntimeError, AssertionError) as error:
                print(f"!! nginx skipped: {error}")
        for path in paths:
            for proxy in path.proxies:
                proxy.idle_rss = proxy.rss()
        opened, closed = asyncio.run(measure(paths))
        for path in paths:
            for proxy in path.proxies:
                proxy.loaded_rss = proxy.rss()
        print_latency(opened, paths)
        print_throughput(closed, paths)
        print_resources(paths)
        print_hops(opened, paths)


if __name__ == "__main__":
    main()
