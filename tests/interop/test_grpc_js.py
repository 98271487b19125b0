"""A client that is not Python calls through the sidecar: @grpc/grpc-js (pinned in grpc_js/package-lock.json,
the echo .proto loaded at run time by @grpc/proto-loader) dials a client-side sidecar's outbound port in
plaintext, which routes by gRPC service name (``sidecar.routes``) over mTLS to the app's sidecar, which forwards
to a plain grpcio app. Everything is a real process on loopback: dev agent, app, two sidecars, node.

What node printed is the evidence: replies, metadata both ways (binary values included), trailers, an app's
error with its code, message and rich details (grpc-status-details-bin), a deadline, and the sidecar's refusal
of a service it has no route for. Node runs once; each test reads one part of what it saw."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc import error_details_pb2, status_pb2

from meshlet.security.dev_ca import init_ca, issue
from tests.interop.conftest import NodeClient
from tests.support.agents import start_dev_agent
from tests.support.plain_app import ERROR_DOMAIN, ERROR_REASON
from tests.support.processes import Processes, processes
from tests.support.sidecars import SidecarProcess, start_plain_app, start_sidecar

pytestmark = pytest.mark.slow

TRUST_DOMAIN = "meshlet.test"
SERVICE = "echo"  # the app's service name in Consul, and the upstream the client-side sidecar routes to
CALLER = "web"  # the client-side sidecar's identity
BLOB = base64.b64encode(b"\x00\xff\x01\x02\x03").decode()  # the -bin value client.js sends


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


def tls(certs: Path, service: str) -> dict[str, str]:
    return {
        "source": "files",
        "cert": str(certs / f"{service}.crt"),
        "key": str(certs / f"{service}.key"),
        "ca": str(certs / "ca.crt"),
    }


@pytest.fixture(scope="module")
def client_sidecar(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> SidecarProcess:
    """web's sidecar (outbound only), ready once echo's sidecar is registered and passing behind it."""
    folder = tmp_path_factory.mktemp("mesh")
    certs = folder / "certs"
    init_ca(certs, TRUST_DOMAIN)
    for service in (SERVICE, CALLER):
        issue(certs, service)
    agent = start_dev_agent(module_procs)
    app = start_plain_app(module_procs)
    start_sidecar(
        module_procs,
        folder,
        SERVICE,
        {
            "service": {"name": SERVICE, "check_ttl": "1s"},
            "consul": {"address": agent.url},
            "tls": tls(certs, SERVICE),
            "authz": {
                "default": "deny",
                "rules": [
                    {"from": CALLER, "to": SERVICE, "methods": ["/meshlet_api.echo.v1.Echo/*"], "action": "allow"}
                ],
            },
        },
        app=app.address,
    )
    return start_sidecar(
        module_procs,
        folder,
        CALLER,
        {
            "service": {"name": CALLER},
            "consul": {"address": agent.url},
            "tls": tls(certs, CALLER),
            "sidecar": {"routes": {"meshlet_api.echo.v1.Echo": SERVICE}},
            "upstreams": {SERVICE: {}},
        },
    )


@pytest.fixture(scope="module")
def node_saw(grpc_js: NodeClient, client_sidecar: SidecarProcess) -> dict[str, Any]:
    """What client.js printed after its calls through web's sidecar, one entry per call."""
    return grpc_js.run(f"127.0.0.1:{client_sidecar.outbound_port}")


def assert_ok(result: dict[str, Any]) -> None:
    assert result["status"]["name"] == "OK", result["status"]


def test_node_unary_call_gets_the_apps_reply_and_its_metadata_both_ways(node_saw: dict[str, Any]) -> None:
    echo = node_saw["echo"]
    assert_ok(echo)
    payload = base64.b64encode(b"node payload").decode()
    assert echo["reply"] == {"message": "hello from node", "payload": payload, "served_by": "plain"}
    assert echo["initial"]["initial-x-tenant"] == "acme"
    assert echo["initial"]["initial-x-blob-bin"] == BLOB
    assert echo["status"]["trailing"]["trailing-x-tenant"] == "acme"
    assert echo["status"]["trailing"]["trailing-x-blob-bin"] == BLOB


def test_node_server_stream_gets_every_message_in_order(node_saw: dict[str, Any]) -> None:
    stream = node_saw["server_stream"]
    assert_ok(stream)
    assert [reply["message"] for reply in stream["replies"]] == ["node-0", "node-1", "node-2"]


def test_node_bidi_stream_gets_each_reply_and_the_apps_metadata(node_saw: dict[str, Any]) -> None:
    bidi = node_saw["bidi"]
    assert_ok(bidi)
    assert [reply["message"] for reply in bidi["replies"]] == ["a", "b", "c"]
    assert bidi["initial"]["initial-x-blob-bin"] == BLOB
    assert bidi["status"]["trailing"]["trailing-x-tenant"] == "acme"


def test_app_error_reaches_node_with_its_code_message_trailer_and_details(node_saw: dict[str, Any]) -> None:
    status = node_saw["failure"]["status"]
    assert (status["name"], status["details"]) == ("FAILED_PRECONDITION", "Echo failed as asked (FAILED_PRECONDITION)")
    assert status["trailing"]["x-app-trailer"] == "failed"
    rich = status_pb2.Status.FromString(base64.b64decode(status["trailing"]["grpc-status-details-bin"]))
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert (rich.code, info.reason, info.domain) == (9, ERROR_REASON, ERROR_DOMAIN)


def test_node_call_to_a_hanging_app_ends_at_nodes_deadline(node_saw: dict[str, Any]) -> None:
    assert node_saw["deadline"]["status"]["name"] == "DEADLINE_EXCEEDED"


def test_service_without_a_route_is_refused_with_unavailable_naming_it(node_saw: dict[str, Any]) -> None:
    status = node_saw["unknown_service"]["status"]
    assert status["name"] == "UNAVAILABLE"
    assert "meshlet_api.nowhere.v1.Nowhere" in status["details"]
    assert "sidecar.routes" in status["details"]
