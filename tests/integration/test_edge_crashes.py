"""An instance killed (SIGKILL) while it holds a call from the edge: a method the protos do not declare idempotent is
never sent again, to any instance; one they declare safe is re-sent to another and the client sees no failure.
The edge reads idempotency from its own descriptor sets, not from modules it never imported. Executions are
counted at the servers (their Stats and their logs), never inferred from what the client saw."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest

from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.conftest import EchoFleet
from tests.support.agents import Agent
from tests.support.edge_echo import start_edge
from tests.support.processes import Processes

HANG_MS = "60000"  # A holds every call it takes until the test kills it
CALLS_TO_FIND_A = 40  # P2C sends about half the calls to A: one of these reaches it, or the test says so
_fresh = itertools.count()


async def calls_received(port: int) -> dict[str, int]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Stats(echo_pb2.StatsRequest(), timeout=5)
    return dict(reply.calls)


Send = Callable[[str], Awaitable[tuple[int, str]]]  # a message -> the edge's status and body


async def until_a_call_hangs_at_a(
    fleet: EchoFleet, method: str, send: Send
) -> tuple[str, asyncio.Future[tuple[int, str]]]:
    """Sends requests one at a time (B answers at once) until one is held by A; returns its message and task."""
    for _ in range(CALLS_TO_FIND_A):
        message = f"crash-{next(_fresh)}"
        before = (await calls_received(fleet.ports["a"])).get(method, 0)
        task = asyncio.ensure_future(send(message))
        while not task.done():
            if (await calls_received(fleet.ports["a"])).get(method, 0) > before:
                return message, task
            await asyncio.sleep(0.02)
        status, body = task.result()
        assert status == 200, body  # B answered it
    raise AssertionError(f"none of {CALLS_TO_FIND_A} calls reached instance A")


@pytest.mark.parametrize(
    ("verb", "method", "answer"),
    [
        ("POST", "EchoOnce", 503),  # not idempotent: it may have run at A, so it is never sent again
        ("GET", "Echo", 200),  # NO_SIDE_EFFECTS in the edge's descriptor set: re-sent to B
    ],
)
async def test_a_call_held_by_an_instance_killed_mid_call(
    procs: Processes, agent: Agent, tmp_path: Path, verb: str, method: str, answer: int
) -> None:
    fleet = EchoFleet(procs, agent, service="echo")
    fleet.start("a", "--delay-ms", HANG_MS, "--log", str(tmp_path / "a.log"))
    fleet.start("b", "--log", str(tmp_path / "b.log"))
    edge = start_edge(procs, tmp_path, agent, {})

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def send(message: str) -> tuple[int, str]:
            if verb == "GET":
                request = http.get(f"{edge.url}/v1/echo/{message}")
            else:
                request = http.post(f"{edge.url}/v1/echo", json={"message": message})
            async with request as response:
                return response.status, await response.text()

        message, held = await until_a_call_hangs_at_a(fleet, method, send)
        fleet.servers["a"].signal(signal.SIGKILL)
        status, body = await held

    b_executed = (tmp_path / "b.log").read_text().splitlines().count(f"b {method} {message}")
    assert status == answer, body
    assert b_executed == (1 if answer == 200 else 0), body
