"""Echo instances in their own network namespaces on a bridge (tests.k8s.netns), the dev agent in another, the
test process calling through the SDK from the root namespace; faults are put on one pod's link
(tests.faults.netfaults). At the end of the run the suite prints what the callers saw under each fault."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshlet.config import load_config
from meshlet.mesh import Mesh
from tests.faults import netfaults
from tests.faults.tally import ROWS, table
from tests.k8s import netns
from tests.support.agents import Agent
from tests.support.processes import Child, Processes, http_answers, meshlet_argv, wait_until

AGENT_PORT = 8500
ECHO_PORT = 15006
START_S = 30.0  # bounds on waiting for processes, never timing assertions


@dataclass
class Cluster:
    """The pods of one test: the agent's, and one per echo instance (a restarted instance gets a new pod)."""

    network: netns.PodNetwork
    procs: Processes
    folder: Path
    service: str = field(default_factory=lambda: f"echo-{uuid.uuid4().hex[:6]}")
    agent: Agent | None = None
    instances: dict[str, tuple[netns.Pod, Child]] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        """Every execution of every instance, one line each (tests.support.echo_server --log)."""
        return self.folder / "executions.log"

    def start_agent(self) -> Agent:
        pod = self.network.add_pod("consul")
        argv = meshlet_argv("dev-agent", "--http-addr", f"{pod.ip}:{AGENT_PORT}")
        child = self.procs.start(pod.argv(argv), name="dev-agent")
        self.agent = Agent("meshlet", pod.ip, AGENT_PORT, child)
        wait_until(lambda: http_answers(f"http://{pod.ip}:{AGENT_PORT}/v1/status/leader"), START_S, "the agent")
        return self.agent

    @property
    def agent_pod(self) -> netns.Pod:
        return self.network.pods["consul"]

    def start(self, name: str, *, wait: bool = True) -> netns.Pod:
        assert self.agent is not None
        pod = self.network.add_pod(name)
        argv = [sys.executable, "-m", "tests.support.echo_server", "--name", name, "--host", pod.ip]
        argv += ["--port", str(ECHO_PORT), "--log", str(self.log)]
        env = {
            "CONSUL_HTTP_ADDR": self.agent.url,
            "MESHLET_SERVICE__NAME": self.service,
            "MESHLET_SERVICE__CHECK_TTL": "2s",
            "MESHLET_SERVICE__DRAIN_GRACE": "1s",
        }
        self.instances[name] = (pod, self.procs.start(pod.argv(argv), name=name, env=env))
        if wait:
            self.wait_passing(name)
        return pod

    def passing(self) -> set[str]:
        assert self.agent is not None
        try:
            return {entry["Service"]["Address"] for entry in self.agent.passing(self.service)}
        except OSError:
            return set()

    def wait_passing(self, name: str) -> None:
        pod, child = self.instances[name]
        try:
            wait_until(lambda: pod.ip in self.passing(), START_S, f"{name} passing in the agent")
        except AssertionError:
            raise AssertionError(f"{name} never passed:\n{child.output()}") from None

    def pod(self, name: str) -> netns.Pod:
        return self.instances[name][0]

    def child(self, name: str) -> Child:
        return self.instances[name][1]

    def caller(self, **overrides: object) -> Mesh:
        assert self.agent is not None
        return Mesh(load_config(None, env={"CONSUL_HTTP_ADDR": self.agent.url}, overrides=dict(overrides) or None))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(f"network faults in namespaces: {reason}")
    network = netns.PodNetwork.create()
    procs = Processes(tmp_path)
    try:
        made = Cluster(network, procs, tmp_path)
        made.log.touch()
        made.start_agent()
        reason = netfaults.nft_unavailable(made.agent_pod)
        if reason is not None:
            pytest.skip(f"network faults in namespaces: {reason}")
        yield made
    finally:
        for pod in network.pods.values():
            netfaults.heal(pod)
        procs.close()  # processes first, while their namespaces still exist
        network.close()


@pytest.fixture
async def caller(cluster: Cluster) -> AsyncIterator[Mesh]:
    mesh = cluster.caller()
    try:
        yield mesh
    finally:
        await mesh.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table README's "Reliability" section quotes: each fault, what the callers saw."""
    if not ROWS:
        return
    terminalreporter.section("network faults: what the callers saw")
    for line in table(ROWS):
        terminalreporter.write_line(line)
