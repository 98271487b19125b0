"""What the edge's rate limits and quotas (``edge.plans``) cost: a decision in the in-process store against one in
Redis (a real ``redis-server`` on loopback, the Lua script's one round trip), and requests/s through a real
meshlet-edge without limits, with the memory store and with the Redis store.

1. Decisions alone, in this process: a plan with a token bucket and all three calendar windows (so the script
   does the most work it can), never refusing, charged to 1,000 consumers in turn; µs per decision one at a
   time, and decisions/s with 16 in flight (Redis only: the memory store never waits).
2. Through the edge: the echo app of benchmarks/edge_overhead behind three edge processes (no plans, memory,
   Redis), ``GET /v1/echo/{message}``, closed loop at 1 and 16 in flight, the edges taking turns.

Nothing is asserted. Needs Debian's redis-server (skipped with a note when missing). Knobs:
BENCH_LIMITS_DECISIONS (default 5000), BENCH_LIMITS_DURATION_S (default 3, per cell of part 2).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.edge_overhead import ECHO_SERVICE, UPSTREAM, echo_with_http_rules
from benchmarks.sdk_overhead import Result, closed_loop
from meshlet_edge.limits.decision import Plan, Quota, headers
from meshlet_edge.limits.memory_store import MemoryStore
from meshlet_edge.limits.redis_store import RedisStore
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Processes, free_port, http_ok, processes, wait_until
from tests.support.redis_server import RedisServer, start_redis
from tests.support.sidecars import start_plain_app, write_config

DECISIONS = int(os.environ.get("BENCH_LIMITS_DECISIONS", "5000"))
DURATION_S = float(os.environ.get("BENCH_LIMITS_DURATION_S", "3"))
IN_FLIGHT = (1, 16)
CONSUMERS = [f"ip:198.51.{n // 256}.{n % 256}" for n in range(1000)]
PLAN = Plan("bench", 1e6, 10**9, (Quota("minute", 10**9), Quota("day", 10**9), Quota("month", 10**9)))
PLAN_CONFIG = {"rate_per_s": 1e6, "burst": 10**9, "per_minute": 10**9, "per_day": 10**9, "per_month": 10**9}
START_S = 30.0  # a bound on waiting for a process, never a measurement


async def decisions_us(store: Any, count: int) -> tuple[float, float]:
    """(wall µs, this process's CPU µs) per decision, one at a time (the headers computed too, as the edge does).
    CPU time is the steadier figure on a shared machine; the wall time adds the wait for Redis."""
    for n in range(200):
        await store.charge(CONSUMERS[n % len(CONSUMERS)], PLAN, 1, time.time())
    began, cpu = time.perf_counter(), time.process_time()
    for n in range(count):
        now = time.time()
        headers(PLAN, await store.charge(CONSUMERS[n % len(CONSUMERS)], PLAN, 1, now), now)
    return (time.perf_counter() - began) / count * 1e6, (time.process_time() - cpu) / count * 1e6


async def redis_throughput(store: RedisStore, in_flight: int, count: int) -> float:
    """Decisions/s with `in_flight` decisions waiting on Redis at once."""
    counter = iter(range(count))

    async def worker() -> None:
        for n in counter:
            await store.charge(CONSUMERS[n % len(CONSUMERS)], PLAN, 1, time.time())

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return count / (time.perf_counter() - began)


async def part_one(redis: RedisServer) -> None:
    memory = MemoryStore()
    shared = RedisStore(redis.url, 1.0)
    try:
        memory_us, memory_cpu = await decisions_us(memory, DECISIONS * 4)
        redis_us, redis_cpu = await decisions_us(shared, DECISIONS)
        redis_16 = await redis_throughput(shared, 16, DECISIONS)
    finally:
        await shared.close()
    print("\n== One decision (token bucket + minute, day and month quotas), in this process")
    print(f"{'store':<10}{'wall µs (1 at a time)':>24}{'edge CPU µs':>14}{'decisions/s (16 in flight)':>30}")
    print(f"{'memory':<10}{memory_us:>24.1f}{memory_cpu:>14.1f}{'(never waits)':>30}")
    print(f"{'redis':<10}{redis_us:>24.1f}{redis_cpu:>14.1f}{redis_16:>30,.0f}")
    print(f"Redis adds {redis_us - memory_us:.0f} µs of wall time per decision one at a time (a loopback round trip")
    print(
        f"+ the script), {redis_cpu - memory_cpu:.0f} µs of the edge's CPU (redis-py); load: {os.getloadavg()[0]:.1f}"
    )


def start_edge(procs: Processes, folder: Path, agent: Agent, name: str, edge: dict[str, Any]) -> str:
    config = {
        "service": {"name": name},
        "consul": {"address": agent.url},
        "tls": {"source": "off"},
        "edge": {"services": {ECHO_SERVICE: UPSTREAM}, "descriptor_sets": [str(folder / "echo.pb")], **edge},
    }
    path = write_config(folder / f"{name}.yaml", config)
    port, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "meshlet_edge", "--config", str(path), "--listen", f"127.0.0.1:{port}"]
    child = procs.start([*argv, "--admin-addr", f"127.0.0.1:{admin}"], name=name)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/ready") or not child.alive(), START_S, f"{name} ready")
    if not child.alive():
        raise RuntimeError(f"{name} exited at start:\n{child.output()}")
    return f"http://127.0.0.1:{port}/v1/echo/hello"


async def part_two(edges: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        failures: dict[str, int] = dict.fromkeys(edges, 0)

        def caller(name: str) -> Any:
            async def call() -> None:
                async with session.get(edges[name]) as response:
                    await response.read()
                    if response.status != 200:
                        failures[name] += 1

            return call

        for name in edges:  # warm up: connections, the edge's channels
            for _ in range(200):
                await caller(name)()
        print("\n== Requests/s through meshlet-edge (GET, echo upstream; edges taking turns)")
        print(f"{'edge':<16}" + "".join(f"{f'{n} in flight':>16}" for n in IN_FLIGHT))
        results: dict[str, list[Result]] = {name: [] for name in edges}
        for in_flight in IN_FLIGHT:
            for name in edges:
                results[name].append(await closed_loop(caller(name), in_flight, DURATION_S))
        for name in edges:
            print(f"{name:<16}" + "".join(f"{r.throughput:>16,.0f}" for r in results[name]))
        if any(failures.values()):
            print(f"!! answers other than 200: {failures}")


def main() -> None:
    if shutil.which("redis-server") is None:
        print("!! limits_overhead skipped: redis-server is not installed (apt-get install -y redis-server)")
        return
    with tempfile.TemporaryDirectory(prefix="meshlet-limits-bench-") as tmp, processes(Path(tmp)) as procs:
        folder = Path(tmp)
        redis = start_redis(procs)
        asyncio.run(part_one(redis))
        (folder / "echo.pb").write_bytes(echo_with_http_rules().SerializeToString())
        app = start_plain_app(procs, "app")
        agent = start_dev_agent(procs)
        agent.client().agent.service.register(UPSTREAM, service_id="echo-1", address="127.0.0.1", port=app.port)
        plans = {"plans": {"default": PLAN_CONFIG}}
        edges = {
            "no limits": start_edge(procs, folder, agent, "edge-plain", {}),
            "memory store": start_edge(procs, folder, agent, "edge-memory", plans),
            "redis store": start_edge(procs, folder, agent, "edge-redis", {**plans, "limits": {"store": redis.url}}),
        }
        asyncio.run(part_two(edges))


if __name__ == "__main__":
    main()
