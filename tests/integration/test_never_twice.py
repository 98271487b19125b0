"""A call that is not idempotent runs at most once, whatever the servers say or how they die; one that is
idempotent survives an instance's death. Executions are counted at the servers (real processes, killed with
SIGKILL), never inferred from what the caller saw."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshlet.mesh import Mesh
from tests.integration.conftest import MeshFactory
from tests.support.agents import Agent
from tests.support.charge_server import CHARGE, FLOOD, UPLOAD
from tests.support.processes import Child, Processes, eventually, free_port

SERVICE = "charges"
WAIT_S = 10.0
CRASH_TRIALS = 100  # per kind: unary and client stream, 200 crashes in all
IDEMPOTENT_TRIALS = 30
FLOOD_MESSAGE = b"f" * 65536


class Charges:
    """Instance A (weight 1000, dies after every execution and comes back at once) and instance B (weight 1,
    never dies), registered in the agent without checks, both writing their executions into one log."""

    def __init__(self, procs: Processes, agent: Agent, log: Path) -> None:
        self.log = log
        self.ports = {"a": free_port(), "b": free_port()}
        log.touch()
        self.servers: dict[str, Child] = {}
        for name, weight in (("a", 1000), ("b", 1)):
            extra = ["--die-after-execution"] if name == "a" else []
            argv = [sys.executable, "-m", "tests.support.charge_server", "--name", name, "--log", str(log)]
            self.servers[name] = procs.start([*argv, "--port", str(self.ports[name]), *extra], name=f"charges-{name}")
            register(agent, name, self.ports[name], weight)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def ready(self, name: str) -> int:
        return self.lines().count(f"ready {name}")

    def came_back(self, name: str, ready_before: int) -> bool:
        return self.ready(name) > ready_before

    def executions(self, method: str, request: str) -> list[str]:
        """Which instances executed `request` of `method`, one entry per execution."""
        return [line.split()[0] for line in self.lines() if line.split()[1:3] == [method, request]]


def register(agent: Agent, name: str, port: int, weight: int) -> None:
    body = {
        "Name": SERVICE,
        "ID": f"{SERVICE}-{name}",
        "Address": "127.0.0.1",
        "Port": port,
        "Weights": {"Passing": weight, "Warning": 1},
    }
    request = urllib.request.Request(
        f"{agent.url}/v1/agent/service/register", data=json.dumps(body).encode(), method="PUT"
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


@pytest.fixture
async def charges(procs: Processes, agent: Agent, tmp_path: Path) -> Charges:
    found = Charges(procs, agent, tmp_path / "executions.log")
    await eventually(lambda: found.ready("a") == found.ready("b") == 1, "both charge servers to serve", WAIT_S)
    return found


def crash_tolerant_mesh(mesh_factory: MeshFactory, *idempotent: str) -> Mesh:
    """A caller that sends nearly every call to A (weighted round robin: P2C would prefer idle B), whose breaker
    never ejects A and whose budget always has a retry: only retry safety may stop a second execution.
    `idempotent` methods are declared safe to re-send."""
    retry = {
        "budget_ratio": 1.0,
        "budget_min_per_s": 1000,
        "replay_buffer_bytes": 2 * 1024 * 1024,
        "idempotent": list(idempotent),
    }
    policy = {"balancer": "round_robin", "breaker": {"failures": 100_000}, "retry": retry}
    return mesh_factory(upstreams={SERVICE: policy})


async def flood(mesh: Mesh, writing: asyncio.Event) -> None:
    """A busy client stream on A's connection: a crash fails its writes, and grpc puts that write error on
    every stream of the connection."""

    async def messages() -> AsyncIterator[bytes]:
        for sent in range(1_000_000):
            if sent == 4:
                writing.set()
            yield FLOOD_MESSAGE

    try:
        await mesh.channel(SERVICE).stream_unary(FLOOD)(messages(), timeout=WAIT_S)
    except grpc.aio.AioRpcError:
        pass


async def crash_trials(mesh: Mesh, charges: Charges, kind: str, trials: int) -> dict[str, int]:
    """Run `trials` calls of `kind` (Charge or Upload), each while a flood writes on A's connection, and count
    what the servers executed: how many calls A executed (and died of), and how many ran twice."""
    channel = mesh.channel(SERVICE)
    seen = {"a_executed": 0, "twice": 0, "caller_ok": 0}
    for trial in range(trials):
        ready = charges.ready("a")
        writing = asyncio.Event()
        flooding = asyncio.create_task(flood(mesh, writing))
        await asyncio.wait_for(writing.wait(), WAIT_S)
        request = f"{kind}-{trial}"
        try:
            if kind == "Charge":
                await channel.unary_unary(CHARGE)(request.encode(), timeout=WAIT_S)
            else:
                parts = [request.encode(), *(b"p" * 1024 for _ in range(29))]
                await channel.stream_unary(UPLOAD)(iter(parts), timeout=WAIT_S)
            seen["caller_ok"] += 1
        except grpc.aio.AioRpcError:
            pass
        flooding.cancel()
        await asyncio.gather(flooding, return_exceptions=True)
        executed = charges.executions(kind, request)
        assert len(executed) >= 1, f"{request} was never executed, yet the servers never saw it fail"
        if executed[0] == "a":
            seen["a_executed"] += 1
            await eventually(functools.partial(charges.came_back, "a", ready), "A to come back", WAIT_S)
        if len(executed) > 1:
            seen["twice"] += 1
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["Charge", "Upload"])
async def test_a_call_a_server_executed_before_crashing_mid_write_is_never_executed_again(
    charges: Charges, mesh_factory: MeshFactory, kind: str
) -> None:
    """Server A executes a non-idempotent call, then dies of SIGKILL while another call writes on the same
    connection: the write error lands on every stream of it, and the call must not be re-sent to B."""
    mesh = crash_tolerant_mesh(mesh_factory)

    seen = await crash_trials(mesh, charges, kind, CRASH_TRIALS)

    print(f"{kind}: {seen}")
    assert seen["a_executed"] >= CRASH_TRIALS * 0.9, seen  # the trials did crash A mid-call
    assert seen["twice"] == 0, seen


@pytest.mark.slow
async def test_an_idempotent_call_survives_its_servers_crash_mid_write(
    charges: Charges, mesh_factory: MeshFactory
) -> None:
    """The same crash, with Charge declared idempotent: every call is re-sent to B, and the caller sees no
    failure (A ran it too: that is what declaring it idempotent allows)."""
    mesh = crash_tolerant_mesh(mesh_factory, CHARGE)

    seen = await crash_trials(mesh, charges, "Charge", IDEMPOTENT_TRIALS)

    print(f"idempotent Charge: {seen}")
    assert seen["a_executed"] >= IDEMPOTENT_TRIALS * 0.9, seen
    assert seen["caller_ok"] == IDEMPOTENT_TRIALS, seen
