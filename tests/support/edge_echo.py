"""The echo server (meshlet's SDK, registered as ``echo``) behind meshlet-edge, with HTTP rules given to its methods
in the descriptor set the edge reads, for the tests of the edge's policies (cache, ETags, CORS):

    GET  /v1/echo/{message}      Echo, declared NO_SIDE_EFFECTS (so it has ETags); also at /v1/fresh/{message}
                                 and /v1/private/{message}, for rules that differ by path
    POST /v1/echo                EchoOnce, body "*": a write
    GET  /v1/stream/{message}    ServerStream: NDJSON or server-sent events

The echo server logs every execution (``--log``), so a test counts the calls that reached it per message."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from meshlet_api.echo.v1 import echo_pb2
from tests.support.agents import Agent
from tests.support.descriptor_sets import descriptor_set
from tests.support.processes import Child, Processes, free_port, http_ok, wait_until
from tests.support.sidecars import START_S, write_config

ECHO_SERVICE = "meshlet_api.echo.v1.Echo"


@dataclass
class EchoServer:
    child: Child
    log: Path

    def calls(self, message: str, method: str = "Echo") -> int:
        """How many times `method` ran for `message` (the server logs before it answers)."""
        if not self.log.exists():
            return 0
        return self.log.read_text().splitlines().count(f"echo-1 {method} {message}")


@dataclass
class EdgeProcess:
    child: Child
    url: str
    admin_url: str


def start_echo(procs: Processes, agent: Agent, folder: Path) -> EchoServer:
    log = folder / "echo.log"
    env = {
        "CONSUL_HTTP_ADDR": agent.url,
        "MESHLET_TLS__SOURCE": "off",
        "MESHLET_SERVICE__NAME": "echo",
        "MESHLET_SERVICE__CHECK_TTL": "1s",
        "MESHLET_SERVICE__DRAIN_GRACE": "1s",
    }
    argv = [sys.executable, "-m", "tests.support.echo_server", "--name", "echo-1", "--port", str(free_port())]
    child = procs.start([*argv, "--log", str(log)], name="echo", env=env)
    try:
        wait_until(lambda: bool(agent.passing("echo")) or not child.alive(), START_S, "echo to pass")
    except AssertionError:
        raise AssertionError(f"echo never turned healthy:\n{child.output()}") from None
    assert child.alive(), child.output()
    return EchoServer(child, log)


def echo_with_http_rules() -> descriptor_pb2.FileDescriptorSet:
    def bind(file: descriptor_pb2.FileDescriptorProto) -> None:
        if file.name != echo_pb2.DESCRIPTOR.name:
            return
        (service,) = file.service
        for method in service.method:
            if method.name == "Echo":
                method.options.idempotency_level = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
                rule = method.options.Extensions[annotations_pb2.http]
                rule.get = "/v1/echo/{message}"
                rule.additional_bindings.add(get="/v1/fresh/{message}")
                rule.additional_bindings.add(get="/v1/private/{message}")
            if method.name == "ServerStream":
                method.options.Extensions[annotations_pb2.http].get = "/v1/stream/{message}"
            if method.name == "EchoOnce":
                method.options.Extensions[annotations_pb2.http].post = "/v1/echo"
                method.options.Extensions[annotations_pb2.http].body = "*"

    return descriptor_set(annotations_pb2.DESCRIPTOR, echo_pb2.DESCRIPTOR, edit=bind)


def start_edge(procs: Processes, folder: Path, agent: Agent, edge: dict[str, Any], name: str = "edge") -> EdgeProcess:
    """An edge in front of echo; `edge` adds to its ``edge:`` section (cache, cors, ...)."""
    descriptors = folder / "echo.pb"
    descriptors.write_bytes(echo_with_http_rules().SerializeToString())
    config = {
        "service": {"name": "edge"},
        "consul": {"address": agent.url},
        "tls": {"source": "off"},
        "edge": {"services": {ECHO_SERVICE: "echo"}, "descriptor_sets": [str(descriptors)], **edge},
    }
    return start_configured_edge(procs, folder, config, name)


def start_configured_edge(procs: Processes, folder: Path, config: dict[str, Any], name: str = "edge") -> EdgeProcess:
    """An edge on `config` (written to ``folder/<name>.yaml``), listening on free loopback ports, once ready."""
    path = write_config(folder / f"{name}.yaml", config)
    listen, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "meshlet_edge", "--config", str(path), "--listen", f"127.0.0.1:{listen}"]
    child = procs.start([*argv, "--admin-addr", f"127.0.0.1:{admin}"], name=name)
    admin_url = f"http://127.0.0.1:{admin}"
    try:
        wait_until(lambda: http_ok(admin_url + "/ready") or not child.alive(), START_S, f"{name} to turn ready")
    except AssertionError:
        raise AssertionError(f"{name} never turned ready:\n{child.output()}") from None
    assert child.alive(), f"{name} exited at start:\n{child.output()}"
    return EdgeProcess(child, f"http://127.0.0.1:{listen}", admin_url)
