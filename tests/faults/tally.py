"""Calls at a fixed rate through the SDK while a fault plays, what each caller saw, and the executions the
servers recorded (tests.support.echo_server --log): together, one row of the suite's table."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from meshlet_api.echo.v1 import echo_pb2

Call = Callable[[echo_pb2.EchoRequest, float], Awaitable[echo_pb2.EchoReply]]


@dataclass
class Outcome:
    message: str
    started: float  # time.monotonic()
    ended: float
    code: str  # "OK" or the status code's name


@dataclass
class Load:
    """Calls started every 1/rate_per_s seconds, each with its own deadline, none waiting for the one before."""

    call: Call
    prefix: str
    rate_per_s: float = 50.0
    deadline_s: float = 5.0
    outcomes: list[Outcome] = field(default_factory=list)
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    async def run_for(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        calls: list[asyncio.Task[None]] = []
        while loop.time() < until:
            calls.append(asyncio.create_task(self._one(f"{self.prefix}-{next(self._counter)}")))
            await asyncio.sleep(1 / self.rate_per_s)
        await asyncio.gather(*calls)

    async def _one(self, message: str) -> None:
        started = time.monotonic()
        try:
            await self.call(echo_pb2.EchoRequest(message=message), self.deadline_s)
            code = "OK"
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        self.outcomes.append(Outcome(message, started, time.monotonic(), code))

    def failed_after(self, moment: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= moment and o.code != "OK"]


def executions(log: Path, method: str) -> collections.Counter[str]:
    """How many times the servers executed each request (by message) of `method`."""
    counted: collections.Counter[str] = collections.Counter()
    for line in log.read_text().splitlines():
        _name, logged_method, message = line.split(" ", 2)
        if logged_method == method:
            counted[message] += 1
    return counted


@dataclass(frozen=True)
class Row:
    fault: str
    calls: int
    success_pct: float
    p99_ms: float
    lost: int  # idempotent calls the caller saw fail: nothing may be lost
    duplicated: int  # non-idempotent requests executed more than once: nothing may be duplicated
    note: str = ""


def row(fault: str, load: Load, executed: collections.Counter[str], *, idempotent: bool, note: str = "") -> Row:
    """The table's row for `load`, after checking what holds whatever the fault: every call the caller saw
    succeed was executed by a server."""
    ok = [o for o in load.outcomes if o.code == "OK"]
    unexecuted = [o.message for o in ok if executed[o.message] == 0]
    assert not unexecuted, f"{fault}: calls answered OK that no server executed: {unexecuted[:5]}"
    latencies = sorted((o.ended - o.started) * 1000 for o in ok)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    failed = len(load.outcomes) - len(ok)
    duplicated = sum(1 for o in load.outcomes if executed[o.message] > 1)
    return Row(
        fault=fault,
        calls=len(load.outcomes),
        success_pct=100 * len(ok) / max(1, len(load.outcomes)),
        p99_ms=p99,
        lost=failed if idempotent else 0,
        duplicated=0 if idempotent else duplicated,
        note=note,
    )


ROWS: list[Row] = []
"""Every row the suite made in this run, printed by its conftest at the end."""


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| fault | calls | success | p99 | lost | duplicated | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.fault} | {r.calls} | {r.success_pct:.1f} % | {r.p99_ms:.0f} ms | {r.lost} | {r.duplicated} "
            f"| {r.note} |"
        )
    return lines
