"""The contract suite runs against every Consul-compatible agent it can find: always the meshlet dev
agent, and a real ``consul agent -dev`` on free ports when a ``consul`` binary is on PATH. Tests that need
the dev agent's faster timers (reaping, short leaf TTLs) ask for `dev_agent_factory` instead."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.agents import Agent, start_dev_agent, start_real_consul
from tests.support.processes import Processes, processes

__all__ = ["Agent", "start_dev_agent"]


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
