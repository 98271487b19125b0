"""Integration fixtures: a real dev agent and real echo servers (each its own process, served through
meshlet's SDK), on free loopback ports; the test process is the client."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from meshlet.config import load_config
from meshlet.mesh import Mesh
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Child, Processes, free_port, wait_until


@pytest.fixture
def agent(procs: Processes) -> Agent:
    return start_dev_agent(procs)


@dataclass
class EchoFleet:
    """Echo server processes registered in one agent under one service name."""

    procs: Processes
    agent: Agent
    service: str = field(default_factory=lambda: f"echo-{uuid.uuid4().hex[:6]}")
    servers: dict[str, Child] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(
        self, name: str, *args: str, wait: bool = True, port: int | None = None, env: dict[str, str] | None = None
    ) -> Child:
        """Start echo server `name`; `env` adds to or overrides its environment (``MESHLET_TLS__SOURCE``...)."""
        port = port or free_port()
        child = self.procs.start(
            [sys.executable, "-m", "tests.support.echo_server", "--name", name, "--port", str(port), *args],
            name=name,
            env={
                "CONSUL_HTTP_ADDR": self.agent.url,
                "MESHLET_SERVICE__NAME": self.service,
                "MESHLET_SERVICE__CHECK_TTL": "1s",
                "MESHLET_SERVICE__DRAIN_GRACE": "2s",
                **(env or {}),
            },
        )
        self.servers[name] = child
        self.ports[name] = port
        if wait:
            self.wait_passing(name)
        return child

    def passing_ports(self) -> set[int]:
        return {int(entry["Service"]["Port"]) for entry in self.agent.passing(self.service)}

    def wait_passing(self, name: str) -> None:
        port = self.ports[name]
        try:
            wait_until(lambda: port in self.passing_ports(), 20, f"{name} to register and pass its check")
        except AssertionError:
            raise AssertionError(f"{name} never turned healthy:\n{self.servers[name].output()}") from None


@pytest.fixture
def fleet(procs: Processes, agent: Agent) -> EchoFleet:
    return EchoFleet(procs, agent)


MeshFactory = Callable[..., Mesh]


@pytest.fixture
async def mesh_factory(agent: Agent) -> AsyncIterator[MeshFactory]:
    """Client-side meshes talking to the test's agent; closed after the test."""
    made: list[Mesh] = []

    def make(**overrides: object) -> Mesh:
        config = load_config(None, env={"CONSUL_HTTP_ADDR": agent.url}, overrides=dict(overrides) or None)
        mesh = Mesh(config)
        made.append(mesh)
        return mesh

    yield make
    for mesh in made:
        await mesh.close()
