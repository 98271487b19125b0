"""The hostile-input suite's targets, started once for the session as an operator runs them (tests/support):
the dev agent (its HTTP API), plain app B behind b-svc's sidecar (mTLS inbound, outbound routed back through
that inbound, admin port), an SDK echo server with its metrics port, and meshlet-edge's HTTP port in front of
that echo server. Each target comes with a
well-behaved client and a memory cap; `faces` names them for the test modules, and every fault a test drives
adds a row to the table printed at the end of the run (the README's "Reliability" quotes it)."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from meshlet.security.certs import channel_options
from meshlet.security.dev_ca import init_ca, issue
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.hostile.watch import Measured, watched
from tests.support.agents import Agent, start_dev_agent
from tests.support.descriptor_sets import write_descriptor_set
from tests.support.processes import Child, Processes, free_port, http_ok, processes, wait_until
from tests.support.sidecars import SidecarProcess, start_plain_app, start_sidecar, tls_files, write_config

TRUST_DOMAIN = "meshlet.test"
ECHO_SERVICE = "meshlet_api.echo.v1.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
CALL_TIMEOUT_S = 5.0  # a bound on one well-behaved call, never a timing assertion
MIB = 1024

# The memory each process may reach under any one fault, the whole session long (RSS seldom shrinks): at rest
# here the sidecar holds ~90 MiB, the SDK server ~85 MiB, the dev agent ~90 MiB (measured), so a leak or an
# unbounded buffer shows, a busy moment does not.
RSS_CAP_KIB = {"sidecar": 200 * MIB, "sdk server": 200 * MIB, "dev agent": 160 * MIB, "edge": 200 * MIB}


@dataclass(frozen=True)
class Face:
    """One port of one process under attack, and how a well-behaved client uses it."""

    name: str  # "sidecar inbound (mTLS)"...
    process: str  # a key of RSS_CAP_KIB
    port: int
    child: Child
    good_call: Callable[[], None]
    tls: bool = False  # the port speaks TLS (mTLS, ALPN h2)

    @property
    def rss_cap_kib(self) -> int:
        return RSS_CAP_KIB[self.process]


@dataclass(frozen=True)
class Row:
    face: str
    fault: str
    measured: Measured
    cap_kib: int
    note: str


ROWS: list[Row] = []


class Hostile:
    """Drive one fault at one face and assert what every fault must leave true."""

    def __init__(self, face: Face, fault: str) -> None:
        self.face = face
        self.fault = fault
        self.note = ""

    def __enter__(self) -> Hostile:
        self._watch = watched(self.face.child.pid, self.face.child.alive, self.face.good_call)
        self.measured = self._watch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._watch.__exit__(None, None, None)
        measured, face = self.measured, self.face
        ROWS.append(Row(face.name, self.fault, measured, face.rss_cap_kib, self.note))
        if exc[0] is not None:
            return
        assert measured.up, f"{face.process} died under {self.fault}:\n{face.child.output()[-3000:]}"
        assert measured.rss_peak_kib < face.rss_cap_kib, (
            f"{face.process} reached {measured.rss_peak_kib // MIB} MiB under {self.fault}"
            f" (cap {face.rss_cap_kib // MIB} MiB)"
        )
        assert measured.success >= 0.99, (
            f"the well-behaved client of {face.name} saw {measured.ok}/{measured.total} under {self.fault}:"
            f" {measured.failures}"
        )


# ------------------------------------------------------------------------------------------ processes


@pytest.fixture(scope="session")
def hostile_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("hostile-procs")) as procs:
        yield procs


@pytest.fixture(scope="session")
def hostile_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    certs = tmp_path_factory.mktemp("hostile-pki")
    init_ca(certs, TRUST_DOMAIN)
    for service in ("a-svc", "b-svc"):
        issue(certs, service)
    return certs


@pytest.fixture(scope="session")
def hostile_agent(hostile_procs: Processes) -> Agent:
    return start_dev_agent(hostile_procs)


@pytest.fixture(scope="session")
def hostile_sidecar(
    hostile_procs: Processes, hostile_pki: Path, hostile_agent: Agent, tmp_path_factory: pytest.TempPathFactory
) -> SidecarProcess:
    """b-svc's sidecar in front of plain app B; its outbound routes Echo to b-svc, i.e. back to its inbound."""
    app = start_plain_app(hostile_procs, "app-b")
    rules = [{"from": caller, "to": "b-svc", "action": "allow"} for caller in ("a-svc", "b-svc")]
    config = {
        "service": {"name": "b-svc", "check_ttl": "2s", "drain_grace": "1s"},
        "consul": {"address": hostile_agent.url},
        "tls": tls_files(hostile_pki, "b-svc"),
        "authz": {"default": "deny", "rules": rules},
        "sidecar": {"routes": {ECHO_SERVICE: "b-svc"}},
    }
    folder = tmp_path_factory.mktemp("hostile-sidecar")
    return start_sidecar(hostile_procs, folder, "b", config, app=app.address)


@dataclass(frozen=True)
class SdkServer:
    child: Child
    port: int
    metrics_port: int


@pytest.fixture(scope="session")
def hostile_sdk_server(hostile_procs: Processes, hostile_agent: Agent) -> SdkServer:
    port, metrics_port = free_port(), free_port()
    child = hostile_procs.start(
        [sys.executable, "-m", "tests.support.echo_server", "--name", "sdk-1", "--port", str(port)],
        name="sdk-server",
        env={
            "CONSUL_HTTP_ADDR": hostile_agent.url,
            "MESHLET_SERVICE__NAME": "echo-hostile",
            "MESHLET_TELEMETRY__METRICS_PORT": str(metrics_port),
        },
    )
    url = f"http://127.0.0.1:{metrics_port}/live"
    wait_until(lambda: http_ok(url) or not child.alive(), 30, "the SDK server's metrics port")
    assert child.alive(), child.output()
    return SdkServer(child, port, metrics_port)


@dataclass(frozen=True)
class EdgeProcess:
    child: Child
    port: int


@pytest.fixture(scope="session")
def hostile_edge(
    hostile_procs: Processes,
    hostile_sdk_server: SdkServer,
    hostile_agent: Agent,
    tmp_path_factory: pytest.TempPathFactory,
) -> EdgeProcess:
    """meshlet-edge with the echo server as its upstream: Echo at its default binding, POST /<service>/Echo."""
    folder = tmp_path_factory.mktemp("hostile-edge")
    descriptors = write_descriptor_set(folder / "echo.pb", echo_pb2.DESCRIPTOR)
    config = {
        "tls": {"source": "off"},
        "consul": {"address": hostile_agent.url},
        "edge": {"services": {ECHO_SERVICE: "echo-hostile"}, "descriptor_sets": [str(descriptors)]},
    }
    port = free_port()
    argv = [
        sys.executable, "-m", "meshlet_edge", "--config", str(write_config(folder / "edge.yaml", config)),
        "--listen", f"127.0.0.1:{port}", "--admin-addr", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    child = hostile_procs.start(argv, name="edge")
    eventually_serves(http_post_json(f"http://127.0.0.1:{port}{ECHO_METHOD}"), "the edge to serve Echo")
    assert child.alive(), child.output()
    return EdgeProcess(child, port)


# ------------------------------------------------------------------------------------------ clients


def grpc_echo(channel: grpc.Channel) -> Callable[[], None]:
    echo = echo_pb2_grpc.EchoStub(channel)

    def call() -> None:
        reply = echo.Echo(echo_pb2.EchoRequest(message="hello"), timeout=CALL_TIMEOUT_S)
        assert reply.message == "hello"

    return call


def http_get(url: str) -> Callable[[], None]:
    def call() -> None:
        with urllib.request.urlopen(url, timeout=CALL_TIMEOUT_S) as response:
            assert response.status == 200
            response.read()

    return call


def http_post_json(url: str) -> Callable[[], None]:
    def call() -> None:
        request = urllib.request.Request(url, data=b'{"message": "hello"}', method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as response:
            assert response.status == 200
            assert json.loads(response.read())["message"] == "hello"

    return call


def mtls_credentials(pki: Path, service: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / f"{service}.key").read_bytes(),
        certificate_chain=(pki / f"{service}.crt").read_bytes(),
    )


def eventually_serves(call: Callable[[], None], what: str) -> None:
    def works() -> bool:
        try:
            call()
        except Exception:
            return False
        return True

    wait_until(works, 30, what, interval_s=0.2)


@pytest.fixture(scope="session")
def faces(
    hostile_sidecar: SidecarProcess,
    hostile_sdk_server: SdkServer,
    hostile_agent: Agent,
    hostile_pki: Path,
    hostile_edge: EdgeProcess,
) -> Iterator[dict[str, Face]]:
    """Every attacked port by name, each with a well-behaved client that already works."""
    sidecar, sdk, agent = hostile_sidecar, hostile_sdk_server, hostile_agent
    assert sidecar.inbound_port is not None
    assert agent.child is not None
    inbound = grpc.secure_channel(
        f"127.0.0.1:{sidecar.inbound_port}",
        mtls_credentials(hostile_pki, "a-svc"),
        options=(*channel_options("b-svc", "default", "dc1", TRUST_DOMAIN), ("grpc.use_local_subchannel_pool", 1)),
    )
    outbound = grpc.insecure_channel(
        f"127.0.0.1:{sidecar.outbound_port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )
    direct = grpc.insecure_channel(f"127.0.0.1:{sdk.port}", options=[("grpc.use_local_subchannel_pool", 1)])
    urllib.request.urlopen(urllib.request.Request(f"{agent.url}/v1/kv/hostile/good", data=b"v", method="PUT")).close()
    every = [
        Face("sidecar inbound (mTLS)", "sidecar", sidecar.inbound_port, sidecar.child, grpc_echo(inbound), tls=True),
        Face("sidecar outbound", "sidecar", sidecar.outbound_port, sidecar.child, grpc_echo(outbound)),
        Face("sidecar admin", "sidecar", sidecar.admin_port, sidecar.child, http_get(f"{sidecar.admin_url}/live")),
        Face("SDK server", "sdk server", sdk.port, sdk.child, grpc_echo(direct)),
        Face("SDK metrics", "sdk server", sdk.metrics_port, sdk.child,
             http_get(f"http://127.0.0.1:{sdk.metrics_port}/metrics")),
        Face("dev agent HTTP", "dev agent", agent.port, agent.child, http_get(f"{agent.url}/v1/kv/hostile/good")),
        Face("edge HTTP", "edge", hostile_edge.port, hostile_edge.child,
             http_post_json(f"http://127.0.0.1:{hostile_edge.port}{ECHO_METHOD}")),
    ]  # fmt: skip
    for face in every:
        eventually_serves(face.good_call, f"a well-behaved call to {face.name}")
    yield {face.name: face for face in every}
    for channel in (inbound, outbound, direct):
        channel.close()


GRPC_FACES = ["sidecar inbound (mTLS)", "sidecar outbound", "SDK server"]
HTTP_FACES = ["sidecar admin", "SDK metrics", "dev agent HTTP", "edge HTTP"]
ALL_FACES = GRPC_FACES + HTTP_FACES


# ------------------------------------------------------------------------------------------ the table


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table of every fault driven in this run, as the README's "Reliability" section quotes it."""
    if not ROWS:
        return
    write = terminalreporter.write_line
    write("")
    write("Hostile input: what a well-behaved client saw meanwhile, the target's peak RSS, and whether it stayed up")
    write("")
    write("| port | fault | well-behaved client | RSS peak / cap | up | note |")
    write("|---|---|---|---|---|---|")
    for row in ROWS:
        m = row.measured
        client = f"{m.ok}/{m.total} ok ({100 * m.success:.1f} %)"
        rss = f"{m.rss_peak_kib // MIB} / {row.cap_kib // MIB} MiB"
        write(f"| {row.face} | {row.fault} | {client} | {rss} | {'yes' if m.up else 'NO'} | {row.note} |")
