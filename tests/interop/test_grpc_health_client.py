"""A stock health client against a meshlet server: grpcio-health-checking's own HealthStub, used as any
operator's tooling (a Kubernetes gRPC probe, grpc-health-probe) would, against the echo server run through
``Mesh.serve``, in plaintext and with mesh mTLS. It sees the server and each of its services SERVING, NOT_FOUND
for a service the server does not have, and, on a Watch, NOT_SERVING as soon as the server is told to stop."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshlet.security.certs import channel_options
from meshlet.security.dev_ca import init_ca, issue
from tests.integration.conftest import EchoFleet
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Child, Processes

pytestmark = pytest.mark.slow

TRUST_DOMAIN = "meshlet.test"
ECHO_SERVICE = "meshlet_api.echo.v1.Echo"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CALL_S = 10.0  # a bound on a call that must answer, never a timing assertion


@pytest.fixture
def agent(procs: Processes) -> Agent:
    return start_dev_agent(procs)


@dataclass
class Served:
    """An echo server serving through meshlet, and a plain grpcio channel to it."""

    server: Child
    channel: grpc.Channel


@pytest.fixture(params=["plaintext", "mtls"])
def served(request: pytest.FixtureRequest, procs: Processes, agent: Agent, tmp_path: Path) -> Iterator[Served]:
    fleet = EchoFleet(procs, agent)
    if request.param == "plaintext":
        server = fleet.start("echo-1")
        channel = grpc.insecure_channel(f"127.0.0.1:{fleet.ports['echo-1']}")
    else:
        certs = tmp_path / "certs"
        init_ca(certs, TRUST_DOMAIN)
        for service in (fleet.service, "prober"):
            issue(certs, service)
        tls = {"source": "files", "ca": certs / "ca.crt", "cert": certs / f"{fleet.service}.crt"}
        tls["key"] = certs / f"{fleet.service}.key"
        server = fleet.start("echo-1", env={f"MESHLET_TLS__{key.upper()}": str(value) for key, value in tls.items()})
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(certs / "ca.crt").read_bytes(),
            private_key=(certs / "prober.key").read_bytes(),
            certificate_chain=(certs / "prober.crt").read_bytes(),
        )
        options = channel_options(fleet.service, "default", "dc1", TRUST_DOMAIN)
        channel = grpc.secure_channel(f"127.0.0.1:{fleet.ports['echo-1']}", credentials, options=options)
    with channel:
        yield Served(server, channel)


def check(channel: grpc.Channel, service: str) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_S)
    return int(reply.status)


def test_health_client_sees_the_server_and_its_service_serving(served: Served) -> None:
    assert check(served.channel, "") == SERVING
    assert check(served.channel, ECHO_SERVICE) == SERVING


def test_health_client_gets_not_found_for_a_service_the_server_lacks(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        check(served.channel, "meshlet_api.nowhere.v1.Nowhere")
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_health_watcher_sees_not_serving_once_the_server_is_told_to_stop(served: Served) -> None:
    request = health_pb2.HealthCheckRequest(service="")
    watch = health_pb2_grpc.HealthStub(served.channel).Watch(request, timeout=CALL_S)
    assert next(watch).status == SERVING
    served.server.signal(signal.SIGTERM)
    assert next(watch).status == NOT_SERVING
