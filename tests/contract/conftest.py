"""The contract suite runs against every Consul-compatible agent it can find: always the meshlet dev
agent, and a real ``consul agent -dev`` on free ports when a ``consul`` binary is on PATH. Tests that need
the dev agent's faster timers (reaping, short leaf TTLs) ask for `dev_agent_factory` instead."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import consul
import pytest

from tests.support.processes import (
    Processes,
    free_port,
    http_answers,
    http_ok,
    meshlet_argv,
    processes,
    wait_until,
)


@dataclass(frozen=True)
class Agent:
    """A running Consul-compatible agent under test."""

    kind: str  # "meshlet" or "consul"
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self) -> consul.Consul:
        """A py-consul synchronous client for this agent."""
        return consul.Consul(host=self.host, port=self.port)


def start_dev_agent(procs: Processes, *extra: str) -> Agent:
    port = free_port()
    child = procs.start(meshlet_argv("dev-agent", "--http-addr", f"127.0.0.1:{port}", *extra), name="dev-agent")
    agent = Agent("meshlet", "127.0.0.1", port)
    try:
        wait_until(lambda: http_answers(f"{agent.url}/v1/status/leader"), 15, "the dev agent to answer")
    except AssertionError:
        raise AssertionError(f"dev agent did not start:\n{child.output()}") from None
    return agent


def start_real_consul(procs: Processes, data_dir: Path) -> Agent:
    consul_bin = shutil.which("consul")
    assert consul_bin is not None
    ports = {name: free_port() for name in ("http", "dns", "serf-lan", "serf-wan", "server", "grpc")}
    argv = [
        consul_bin,
        "agent",
        "-dev",
        "-bind",
        "127.0.0.1",
        "-client",
        "127.0.0.1",
        f"-http-port={ports['http']}",
        f"-dns-port={ports['dns']}",
        f"-serf-lan-port={ports['serf-lan']}",
        f"-serf-wan-port={ports['serf-wan']}",
        f"-server-port={ports['server']}",
        f"-grpc-port={ports['grpc']}",
    ]
    procs.start(argv, name="consul")
    agent = Agent("consul", "127.0.0.1", ports["http"])
    wait_until(lambda: http_ok(f"{agent.url}/v1/status/leader"), 30, "consul agent -dev to answer")
    return agent


@pytest.fixture(scope="session", params=["meshlet", "consul"])
def agent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """One agent per kind for the whole session; tests use unique names so they never collide."""
    if request.param == "consul" and shutil.which("consul") is None:
        pytest.skip("no consul binary on PATH: the contract runs against the meshlet dev agent only")
    log_dir = tmp_path_factory.mktemp(f"agent-{request.param}")
    with processes(log_dir) as procs:
        if request.param == "meshlet":
            yield start_dev_agent(procs)
        else:
            yield start_real_consul(procs, log_dir)


@pytest.fixture
def dev_agent_factory(procs: Processes) -> Callable[..., Agent]:
    """Start a private dev agent with extra flags (e.g. ``--reap-interval 200ms``); stopped after the test."""

    def start(*extra: str) -> Agent:
        return start_dev_agent(procs, *extra)

    return start


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names that no other test uses, so tests can share one agent."""
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"{base}-{suffix}"
