"""Consul-compatible agents for tests: the meshlet dev agent as a child process, or a real ``consul agent -dev``."""

from __future__ import annotations

import json
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import consul

from tests.support.processes import Child, Processes, free_port, http_answers, http_ok, meshlet_argv, wait_until


@dataclass(frozen=True)
class Agent:
    """A running Consul-compatible agent under test."""

    kind: str  # "meshlet" or "consul"
    host: str
    port: int
    child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self) -> consul.Consul:
        """A py-consul synchronous client for this agent."""
        return consul.Consul(host=self.host, port=self.port)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return json.load(response)

    def passing(self, service: str) -> list[dict[str, Any]]:
        """The passing instances of `service`, as /v1/health/service answers."""
        result: list[dict[str, Any]] = self.get(f"/v1/health/service/{service}?passing")
        return result


def start_dev_agent(procs: Processes, *extra: str, port: int | None = None) -> Agent:
    port = port or free_port()
    child = procs.start(meshlet_argv("dev-agent", "--http-addr", f"127.0.0.1:{port}", *extra), name="dev-agent")
    agent = Agent("meshlet", "127.0.0.1", port, child)
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
        consul_bin, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
        f"-http-port={ports['http']}", f"-dns-port={ports['dns']}", f"-serf-lan-port={ports['serf-lan']}",
        f"-serf-wan-port={ports['serf-wan']}", f"-server-port={ports['server']}", f"-grpc-port={ports['grpc']}",
    ]  # fmt: skip
    child = procs.start(argv, name="consul")
    agent = Agent("consul", "127.0.0.1", ports["http"], child)
    wait_until(lambda: http_ok(f"{agent.url}/v1/status/leader"), 30, "consul agent -dev to answer")
    return agent
