"""The dev agent under many idle watchers: its RSS and CPU with N blocking queries parked on
/v1/health/service/<name>, and how long one change takes to wake them all (write acknowledged -> last
watcher answered). The agent runs as its own process so its numbers are its own."""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import subprocess
import time
from pathlib import Path

import aiohttp

from tests.support.processes import free_port, http_answers, meshlet_argv, wait_until

WATCHERS = int(os.environ.get("BENCH_WATCHERS", "1000"))
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "10"))
ROUNDS = 5
SERVICE = "bench"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def _register(session: aiohttp.ClientSession, base: str, n: int) -> None:
    body = {"Name": SERVICE, "ID": f"{SERVICE}-{n}", "Port": 10000 + n, "Address": "127.0.0.1"}
    async with session.put(f"{base}/v1/agent/service/register", json=body) as response:
        response.raise_for_status()


async def _index(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(f"{base}/v1/health/service/{SERVICE}") as response:
        return int(response.headers["X-Consul-Index"])


async def _watch(session: aiohttp.ClientSession, base: str, index: int) -> float:
    url = f"{base}/v1/health/service/{SERVICE}?index={index}&wait=5m"
    async with session.get(url) as response:
        await response.read()
        return time.perf_counter()


async def _run(base: str, pid: int) -> None:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await _register(session, base, 0)
        await asyncio.sleep(0.5)
        rss_before = _rss_mib(pid)
        wake_ms: list[float] = []
        idle_cpu = idle_rss = 0.0
        for round_ in range(ROUNDS):
            index = await _index(session, base)
            tasks = [asyncio.create_task(_watch(session, base, index)) for _ in range(WATCHERS)]
            await asyncio.sleep(2.0 if round_ else 3.0)  # let every query reach the agent and park
            if round_ == 0:
                cpu0 = _cpu_s(pid)
                await asyncio.sleep(IDLE_S)
                idle_cpu = _cpu_s(pid) - cpu0
                idle_rss = _rss_mib(pid)
            written = time.perf_counter()
            await _register(session, base, round_ + 1)
            answered = await asyncio.gather(*tasks)
            wake_ms.append((max(answered) - written) * 1000)
        print(f"\n== dev agent: {WATCHERS} idle blocking watchers on /v1/health/service/{SERVICE} ==")
        print(f"{'agent RSS before watchers':<42}{rss_before:10.1f} MiB")
        print(f"{'agent RSS with watchers parked':<42}{idle_rss:10.1f} MiB")
        share = idle_cpu / IDLE_S * 100
        print(f"{'agent CPU while parked':<42}{share:10.2f} % of one core ({idle_cpu:.3f} s in {IDLE_S:.0f} s)")
        print(f"{'one change -> all watchers answered, median':<42}{statistics.median(wake_ms):10.1f} ms")
        print(f"{f'  min / max over {ROUNDS} changes':<42}{min(wake_ms):10.1f} / {max(wake_ms):.1f} ms")


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * WATCHERS + 256)), hard))
    port = free_port()
    agent = subprocess.Popen(
        meshlet_argv("dev-agent", "--http-addr", f"127.0.0.1:{port}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_answers(f"{base}/v1/status/leader"), 15, "the dev agent")
        asyncio.run(_run(base, agent.pid))
    finally:
        agent.terminate()
        agent.wait(10)


if __name__ == "__main__":
    main()
