"""mTLS, intentions and certificate rotation end to end: echo server processes served through ``Mesh.serve``
with certificates from the dev CA (``tls.source: files``) or from the dev agent's Connect CA (``consul``),
found through a dev agent, and this test process as their client, through ``mesh.channel`` or as an outside
client (plain grpc.aio, Python's ssl, ``openssl s_client``). Each refusal is checked where the caller sees it,
and the server's own call counter (its Stats RPC, asked over a properly authenticated channel) shows that the
refused call never reached the handler.

Measured (grpcio 1.85): a grpc server refuses a handshake by closing the connection without a TLS alert, so an
outside client reads an unexpected end of file where an accepted one reads the server's HTTP/2 SETTINGS frame,
and a grpc client gets UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from meshlet.config import load_config
from meshlet.errors import ErrorReason, error_info
from meshlet.events import Event, RetryNotAttempted, RetryScheduled
from meshlet.mesh import Mesh
from meshlet.security.certs import channel_options, colon_hex
from meshlet.security.dev_ca import init_ca, issue
from meshlet.security.identity import SpiffeId, identity_dns_name
from meshlet.telemetry.metrics import Metrics
from meshlet.telemetry.span_file import load_spans
from meshlet.transport import channels
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.conftest import EchoFleet
from tests.support.agents import Agent, start_dev_agent
from tests.support.echo_calls import WATCH, watch_for, watch_until
from tests.support.processes import Processes, eventually, processes

pytestmark = pytest.mark.slow

TRUST_DOMAIN = "meshlet.test"
HELLO = echo_pb2.EchoRequest(message="hello")
ECHO_ONCE = "/meshlet_api.echo.v1.Echo/EchoOnce"
RETRY_EVENTS = (RetryScheduled, RetryNotAttempted)
QUIET_CHECKS = {"MESHLET_SERVICE__CHECK_TTL": "5s"}  # a server busy under load must not miss its TTL check


@dataclass
class DevPki:
    """A throwaway dev CA: its folder holds ``ca.crt`` and each issued ``<service>.crt`` and ``.key``."""

    folder: Path

    def __post_init__(self) -> None:
        init_ca(self.folder, TRUST_DOMAIN)

    def issue(self, service: str) -> str:
        """(Re)issue `service`'s certificate, atomically, as a rotation does; returns its serial."""
        return serial_of(issue(self.folder, service).cert)

    def tls_config(self, service: str) -> dict[str, str]:
        return {
            "source": "files",
            "cert": str(self.folder / f"{service}.crt"),
            "key": str(self.folder / f"{service}.key"),
            "ca": str(self.folder / "ca.crt"),
        }

    def tls_env(self, service: str) -> dict[str, str]:
        """The environment that makes an echo server present `service`'s certificate."""
        return {f"MESHLET_TLS__{key.upper()}": value for key, value in self.tls_config(service).items()}

    def credentials(self, service: str | None, issued_in: Path | None = None) -> grpc.ChannelCredentials:
        """Trusting this CA, presenting `service`'s certificate from `issued_in` (default: this CA's folder),
        or none. Built by hand: meshlet's own TlsMaterial refuses a leaf that does not chain to its bundle."""
        folder = issued_in or self.folder
        return grpc.ssl_channel_credentials(
            root_certificates=(self.folder / "ca.crt").read_bytes(),
            private_key=(folder / f"{service}.key").read_bytes() if service else None,
            certificate_chain=(folder / f"{service}.crt").read_bytes() if service else None,
        )


def serial_of(cert: Path) -> str:
    return colon_hex(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number)


def direct_channel(port: int, credentials: grpc.ChannelCredentials | None, expect: str) -> grpc.aio.Channel:
    """A channel with a connection of its own straight to one server, which must be service `expect`;
    plaintext when `credentials` is None."""
    options = (("grpc.use_local_subchannel_pool", 1), *channel_options(expect, "default", "dc1", TRUST_DOMAIN))
    if credentials is None:
        return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options)


async def handled(port: int, pki: DevPki, expect: str, method: str = "Echo", *, caller: str = "gateway") -> int:
    """How many `method` calls reached the handler of the echo server on `port`, which must be `expect`."""
    async with direct_channel(port, pki.credentials(caller), expect) as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Stats(echo_pb2.StatsRequest(), timeout=5)
    return int(reply.calls.get(method, 0))


async def served_serial(port: int, ca: Path, cert: Path, key: Path, server_name: str) -> str:
    """The serial of the certificate the server presents to a brand-new TLS connection (Python's ssl)."""
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_name)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
    return colon_hex(x509.load_der_x509_certificate(der).serial_number)


def rotation_logged(caplog: pytest.LogCaptureFixture, naming: str) -> Callable[[], bool]:
    """Whether a certificate source in this process has logged a rotation whose line names `naming` (the new
    serial, or the source)."""
    return lambda: any("rotated to" in r.getMessage() and naming in r.getMessage() for r in caplog.records)


def retries_of(mesh: Mesh) -> list[Event]:
    """The retries `mesh` schedules or gives up on from now on: each one is an attempt that failed."""
    found: list[Event] = []
    mesh.events.subscribe(lambda event: found.append(event) if isinstance(event, RETRY_EVENTS) else None)
    return found


@dataclass
class Load:
    """`callers` concurrent loops calling Echo back to back until the block exits; every failure is kept."""

    stub: Any
    callers: int = 4
    ok: int = 0
    failures: list[grpc.aio.AioRpcError] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _call_until_stopped(self) -> None:
        while not self._stop.is_set():
            try:
                await self.stub.Echo(HELLO, timeout=5)
                self.ok += 1
            except grpc.aio.AioRpcError as error:
                self.failures.append(error)

    async def more(self, calls: int) -> None:
        """Wait until `calls` more calls have succeeded."""
        target = self.ok + calls
        await eventually(lambda: self.ok >= target, f"{calls} more calls to succeed (failures: {self.failures[:3]})")

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._call_until_stopped()) for _ in range(self.callers)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


# ------------------------------------------------------------------------------------------ shared servers


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


@pytest.fixture(scope="module")
def module_agent(module_procs: Processes) -> Agent:
    return start_dev_agent(module_procs)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    pki = DevPki(tmp_path_factory.mktemp("pki"))
    for service in ("gateway", "web", "other"):
        pki.issue(service)
    return pki


@pytest.fixture(scope="module")
def outsiders(tmp_path_factory: pytest.TempPathFactory, pki: DevPki) -> dict[str, Path]:
    """Folders holding a certificate for gateway (an allowed identity) that servers must refuse anyway."""
    foreign = DevPki(tmp_path_factory.mktemp("foreign"))  # another CA, same trust domain
    foreign.issue("gateway")
    expired = tmp_path_factory.mktemp("expired")  # the mesh's own CA, an hour of validity that ended an hour ago
    for name in ("ca.crt", "ca.key"):
        shutil.copy(pki.folder / name, expired / name)
    issue(expired, "gateway", ttl_s=3600, now=lambda: time.time() - 7200)
    return {"another CA": foreign.folder, "expired": expired}


@pytest.fixture(scope="module")
def guarded(module_procs: Processes, module_agent: Agent, pki: DevPki) -> EchoFleet:
    """One echo server whose intentions deny by default, allow gateway, and deny gateway's EchoOnce."""
    fleet = EchoFleet(module_procs, module_agent, service=f"orders-{uuid.uuid4().hex[:6]}")
    pki.issue(fleet.service)
    rules = (
        f"[{{from: gateway, to: {fleet.service}, action: allow}}, "
        f'{{from: gateway, to: {fleet.service}, methods: ["{ECHO_ONCE}"], action: deny}}]'
    )
    env = {**pki.tls_env(fleet.service), "MESHLET_AUTHZ__DEFAULT": "deny", "MESHLET_AUTHZ__RULES": rules}
    fleet.start("guarded", env=env)
    return fleet


@pytest.fixture(scope="module")
def impostor(module_procs: Processes, module_agent: Agent, pki: DevPki) -> EchoFleet:
    """An echo server of service 'other', which Consul also lists as an instance of its fleet's service (a stale
    registration on a reused port, say): its certificate names 'other'. (A server cannot start with a certificate
    that names another service than its own: see test_services.py.)"""
    fleet = EchoFleet(module_procs, module_agent, service=f"payments-{uuid.uuid4().hex[:6]}")
    other = EchoFleet(module_procs, module_agent, service="other")
    pki.issue("other")
    other.start("impostor", env=pki.tls_env("other"))
    fleet.servers["impostor"], fleet.ports["impostor"] = other.servers["impostor"], other.ports["impostor"]
    module_agent.client().agent.service.register(
        fleet.service, service_id=f"{fleet.service}-stale", address="127.0.0.1", port=fleet.ports["impostor"]
    )
    fleet.wait_passing("impostor")
    return fleet


MeshAs = Callable[[str], Awaitable[Mesh]]


@pytest.fixture
async def mesh_as(module_agent: Agent, pki: DevPki) -> AsyncIterator[MeshAs]:
    """Started client meshes presenting a service's certificate from `pki`; closed after the test."""
    made: list[Mesh] = []

    async def make(service: str) -> Mesh:
        config = load_config(
            None, env={"CONSUL_HTTP_ADDR": module_agent.url}, overrides={"tls": pki.tls_config(service)}
        )
        mesh = Mesh(config)
        made.append(mesh)
        await mesh.start()
        return mesh

    yield make
    for mesh in made:
        await mesh.close()


# ------------------------------------------------------------------------------------------ who gets in


async def test_a_mesh_client_with_an_allowed_identity_is_served(
    guarded: EchoFleet, pki: DevPki, mesh_as: MeshAs
) -> None:
    port = guarded.ports["guarded"]
    before = await handled(port, pki, guarded.service)
    stub = echo_pb2_grpc.EchoStub((await mesh_as("gateway")).channel(guarded.service))

    replies = [await stub.Echo(HELLO, timeout=5) for _ in range(5)]

    assert {reply.served_by for reply in replies} == {"guarded"}
    assert await handled(port, pki, guarded.service) == before + 5


@pytest.mark.parametrize("caller", ["no certificate", "plaintext", "another CA", "expired"])
async def test_a_caller_without_a_valid_certificate_fails_the_handshake(
    caller: str, guarded: EchoFleet, pki: DevPki, outsiders: dict[str, Path]
) -> None:
    port = guarded.ports["guarded"]
    if caller == "plaintext":
        credentials = None
    else:  # gateway's: an identity this server allows, so only the certificate's issuer or age is wrong
        credentials = pki.credentials(None if caller == "no certificate" else "gateway", outsiders.get(caller))
    before = await handled(port, pki, guarded.service)

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async with direct_channel(port, credentials, guarded.service) as channel:
            await echo_pb2_grpc.EchoStub(channel).Echo(HELLO, timeout=5)

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await handled(port, pki, guarded.service) == before


def s_client(port: int, ca: Path, cert_folder: Path | None = None) -> tuple[bytes, int | None, str]:
    """``openssl s_client -quiet`` (it keeps reading after the handshake, stdin closed), presenting
    `cert_folder`'s gateway certificate or none. Returns the first bytes the server sent, the exit code if
    the server hung up (None if it kept the connection open), and what openssl printed on stderr."""
    argv = ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca), "-alpn", "h2"]
    if cert_folder is not None:
        argv += ["-cert", str(cert_folder / "gateway.crt"), "-key", str(cert_folder / "gateway.key")]
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    try:
        readable, _, _ = select.select([child.stdout], [], [], 10)
        first = os.read(child.stdout.fileno(), 64) if readable else b""
        exit_code = None if first else child.wait(10)
    finally:
        child.kill()
        _, stderr = child.communicate(timeout=10)
    return first, exit_code, stderr.decode(errors="replace")


@pytest.mark.parametrize("caller", ["no certificate", "another CA", "expired"])
def test_openssl_s_client_without_a_valid_certificate_is_disconnected(
    caller: str, guarded: EchoFleet, pki: DevPki, outsiders: dict[str, Path]
) -> None:
    first, exit_code, stderr = s_client(guarded.ports["guarded"], pki.folder / "ca.crt", outsiders.get(caller))

    assert first == b""
    assert exit_code == 1, stderr
    assert "unexpected eof while reading" in stderr


def test_openssl_s_client_with_a_mesh_certificate_gets_the_servers_http2_settings(
    guarded: EchoFleet, pki: DevPki
) -> None:
    first, exit_code, stderr = s_client(guarded.ports["guarded"], pki.folder / "ca.crt", pki.folder)

    assert exit_code is None, stderr
    assert first[3:4] == b"\x04", first  # an HTTP/2 frame header whose type is SETTINGS: the server's preface


# ------------------------------------------------------------------------------------------ intentions


async def test_a_caller_no_intention_allows_gets_permission_denied_naming_caller_and_target(
    guarded: EchoFleet, pki: DevPki, mesh_as: MeshAs
) -> None:
    port = guarded.ports["guarded"]
    before = await handled(port, pki, guarded.service)
    stub = echo_pb2_grpc.EchoStub((await mesh_as("web")).channel(guarded.service))

    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.Echo(HELLO, timeout=5)

    web = SpiffeId.for_service("web", trust_domain=TRUST_DOMAIN).uri
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert web in (denied.value.details() or "")
    assert guarded.service in (denied.value.details() or "")
    info = error_info(denied.value)
    assert info is not None
    assert info.reason == ErrorReason.INTENTION_DENIED
    assert (info.metadata["caller"], info.metadata["target"]) == (web, guarded.service)
    assert await handled(port, pki, guarded.service) == before


async def test_with_certificates_from_consul_a_deny_intention_is_enforced_by_a_config_without_authz(
    module_procs: Processes, module_agent: Agent
) -> None:
    """Secure by default: ``tls.source: consul`` alone makes the server follow Consul's intentions."""
    fleet = EchoFleet(module_procs, module_agent, service=f"ledger-{uuid.uuid4().hex[:6]}")
    assert module_agent.client().connect.intentions.upsert("gateway", fleet.service, action="deny")
    server = fleet.start("ledger", env={"MESHLET_TLS__SOURCE": "consul", **QUIET_CHECKS})
    config = load_config(
        None,
        env={"CONSUL_HTTP_ADDR": module_agent.url},
        overrides={"service": {"name": "gateway"}, "tls": {"source": "consul"}},
    )
    async with Mesh(config) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await echo_pb2_grpc.EchoStub(mesh.channel(fleet.service)).Echo(HELLO, timeout=5)

    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(denied.value)
    assert info is not None
    assert info.reason == ErrorReason.INTENTION_DENIED
    assert "Matched L4 intention" in (denied.value.details() or "")
    assert server.alive()


async def test_a_deny_intention_on_one_method_refuses_only_that_method(
    guarded: EchoFleet, pki: DevPki, mesh_as: MeshAs
) -> None:
    stub = echo_pb2_grpc.EchoStub((await mesh_as("gateway")).channel(guarded.service))

    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.EchoOnce(HELLO, timeout=5)

    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ECHO_ONCE in (denied.value.details() or "")
    info = error_info(denied.value)
    assert info is not None
    assert info.reason == ErrorReason.INTENTION_DENIED
    assert (await stub.Echo(HELLO, timeout=5)).served_by == "guarded"
    assert await handled(guarded.ports["guarded"], pki, guarded.service, "EchoOnce") == 0


# ------------------------------------------------------------------------------------------ who we call


async def test_a_server_presenting_another_services_identity_is_refused_before_any_call_reaches_it(
    impostor: EchoFleet, pki: DevPki, module_agent: Agent, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller learns why (TLS_HANDSHAKE_FAILED: expected and presented identity) from the status, the trace and
    the log; the call is re-sent (a handshake failure never lets a request leave, even EchoOnce's)."""
    spans = tmp_path / "spans.jsonl"
    overrides = {"tls": pki.tls_config("gateway"), "telemetry": {"span_file": str(spans)}}
    config = load_config(None, env={"CONSUL_HTTP_ADDR": module_agent.url}, overrides=overrides)
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="meshlet.tls"):
        async with Mesh(config, metrics=metrics) as mesh:
            retries = retries_of(mesh)
            stub = echo_pb2_grpc.EchoStub(mesh.channel(impostor.service))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.EchoOnce(HELLO, timeout=5)

    error = refused.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    expected = SpiffeId.for_service(impostor.service, trust_domain=TRUST_DOMAIN).uri
    presented = SpiffeId.for_service("other", trust_domain=TRUST_DOMAIN).uri
    peer = f"127.0.0.1:{impostor.ports['impostor']}"
    assert tls_failure(error) == {
        "upstream": impostor.service,
        "peer": peer,
        "failure": "wrong_server_identity",
        "expected_identity": expected,
        "expected_trust_domain": TRUST_DOMAIN,
        "presented_identity": presented,
        "presented_trust_domain": TRUST_DOMAIN,
    }
    assert f"TLS handshake with {peer} ({impostor.service}) failed: it presented {presented}, not {expected}" in (
        error.details() or ""
    )
    assert [type(event) for event in retries][:1] == [RetryScheduled], "a failed handshake may be re-sent"
    assert any(f"it presented {presented}" in record.getMessage() for record in caplog.records)
    failed_spans = [span for span in load_spans([spans]) if span.status == "ERROR"]
    assert failed_spans
    assert all(f"it presented {presented}" in (span.status_message or "") for span in failed_spans)
    handshakes = {"direction": "outbound", "service": impostor.service}
    attempts = len(retries)  # each retry event is an attempt that failed
    assert metrics.registry.get_sample_value("meshlet_tls_handshake_failures_total", handshakes) == attempts
    assert await handled(impostor.ports["impostor"], pki, expect="other") == 0


async def test_a_client_that_does_not_trust_the_servers_ca_is_told_so(
    guarded: EchoFleet, module_agent: Agent, outsiders: dict[str, Path]
) -> None:
    foreign = outsiders["another CA"]  # gateway's certificate and trust bundle from another CA
    tls = {"source": "files", "cert": foreign / "gateway.crt", "key": foreign / "gateway.key", "ca": foreign / "ca.crt"}
    config = load_config(None, env={"CONSUL_HTTP_ADDR": module_agent.url}, overrides={"tls": tls})
    async with Mesh(config) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await echo_pb2_grpc.EchoStub(mesh.channel(guarded.service)).Echo(HELLO, timeout=5)

    error = refused.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = tls_failure(error)
    assert info["failure"] == "server_certificate_not_trusted"
    assert info["peer"] == f"127.0.0.1:{guarded.ports['guarded']}"
    assert info["expected_identity"] == SpiffeId.for_service(guarded.service, trust_domain=TRUST_DOMAIN).uri
    assert info["presented_identity"] == info["expected_identity"], "the right server, from a CA we do not trust"
    details = error.details() or ""
    assert "not trusted here (unable to get local issuer certificate)" in details
    assert "add the server's CA to tls.ca" in details


async def test_a_client_whose_certificate_the_server_refuses_is_told_so(
    guarded: EchoFleet, module_agent: Agent, pki: DevPki, outsiders: dict[str, Path], tmp_path: Path
) -> None:
    """Half a root rotation: this client trusts both CAs, but its certificate comes from the one the server lacks."""
    foreign = outsiders["another CA"]
    both = tmp_path / "both-cas.crt"
    both.write_bytes((foreign / "ca.crt").read_bytes() + (pki.folder / "ca.crt").read_bytes())
    tls = {"source": "files", "cert": foreign / "gateway.crt", "key": foreign / "gateway.key", "ca": both}
    config = load_config(None, env={"CONSUL_HTTP_ADDR": module_agent.url}, overrides={"tls": tls})
    async with Mesh(config) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await echo_pb2_grpc.EchoStub(mesh.channel(guarded.service)).Echo(HELLO, timeout=5)

    info = tls_failure(refused.value)
    assert info["failure"] == "client_certificate_refused"
    assert info["presented_identity"] == SpiffeId.for_service(guarded.service, trust_domain=TRUST_DOMAIN).uri
    assert "its tls.ca must hold the CA that issued ours" in (refused.value.details() or "")


async def test_a_plaintext_client_calling_an_mtls_port_is_told_to_turn_tls_on(
    guarded: EchoFleet, module_agent: Agent
) -> None:
    config = load_config(None, env={"CONSUL_HTTP_ADDR": module_agent.url}, overrides={"tls": {"source": "off"}})
    async with Mesh(config) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await echo_pb2_grpc.EchoStub(mesh.channel(guarded.service)).Echo(HELLO, timeout=5)

    error = refused.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = tls_failure(error)
    assert info["failure"] == "plaintext_client"
    assert info["presented_identity"] == SpiffeId.for_service(guarded.service, trust_domain=TRUST_DOMAIN).uri
    assert "requires TLS (it presented" in (error.details() or "")
    assert "set tls.source to consul or files" in (error.details() or "")


async def test_a_client_calling_a_plaintext_port_is_told_the_server_does_not_speak_tls(
    module_procs: Processes, module_agent: Agent, mesh_as: MeshAs
) -> None:
    fleet = EchoFleet(module_procs, module_agent, service=f"legacy-{uuid.uuid4().hex[:6]}")
    fleet.start("plaintext")
    mesh = await mesh_as("gateway")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await echo_pb2_grpc.EchoStub(mesh.channel(fleet.service)).Echo(HELLO, timeout=5)

    error = refused.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = tls_failure(error)
    assert info["failure"] == "server_not_tls"
    assert info["peer"] == f"127.0.0.1:{fleet.ports['plaintext']}"
    assert info["expected_identity"] == SpiffeId.for_service(fleet.service, trust_domain=TRUST_DOMAIN).uri
    assert "presented_identity" not in info
    assert f"it does not speak TLS (a plaintext port, or tls.source off there); turn mTLS on at {fleet.service}" in (
        error.details() or ""
    )


def tls_failure(error: grpc.aio.AioRpcError) -> dict[str, str]:
    info = error_info(error)
    assert info is not None, f"no ErrorInfo on {error.details()!r}"
    assert info.reason == ErrorReason.TLS_HANDSHAKE_FAILED
    return dict(info.metadata)


# ------------------------------------------------------------------------------------------ rotation


async def test_rotating_the_servers_then_the_clients_certificate_under_load_loses_no_call(
    module_procs: Processes, module_agent: Agent, pki: DevPki, mesh_as: MeshAs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshlet.security.sources")
    fleet = EchoFleet(module_procs, module_agent, service=f"inventory-{uuid.uuid4().hex[:6]}")
    pki.issue(fleet.service)
    pki.issue("cart")
    server = fleet.start("rotating", env={**pki.tls_env(fleet.service), **QUIET_CHECKS})
    port = fleet.ports["rotating"]
    ca, cert, key = pki.folder / "ca.crt", pki.folder / "gateway.crt", pki.folder / "gateway.key"
    server_name = SpiffeId.for_service(fleet.service, trust_domain=TRUST_DOMAIN).dns_name
    first = await served_serial(port, ca, cert, key, server_name)
    mesh = await mesh_as("cart")
    retries = retries_of(mesh)
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))

    async def serves_rotated() -> bool:
        return await served_serial(port, ca, cert, key, server_name) == server_serial

    async with Load(stub) as load:
        await load.more(20)
        server_serial = pki.issue(fleet.service)  # new key, then new certificate, each replaced atomically
        await eventually(serves_rotated, "new handshakes to get the server's new certificate")
        await load.more(20)
        client_serial = pki.issue("cart")
        await eventually(rotation_logged(caplog, client_serial), "the client to load its new certificate")
        await load.more(20)

    assert load.failures == []
    assert retries == [], "not even an attempt failed"
    assert server_serial != first
    assert await served_serial(port, ca, cert, key, server_name) == server_serial
    assert server.alive()
    assert await handled(port, pki, fleet.service) == load.ok  # one process counted every call: never restarted


async def test_a_watch_outlives_a_rotation_of_its_callers_certificate(
    module_procs: Processes,
    module_agent: Agent,
    pki: DevPki,
    mesh_as: MeshAs,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """New calls take new channels with the new certificate; a stream already open runs on, past the grace
    after which the old channel used to be closed under it."""
    monkeypatch.setattr(channels, "CLOSE_GRACE_S", 0.2)  # the grace this test outlasts, 30 s by default
    caplog.set_level(logging.INFO, logger="meshlet.security.sources")
    fleet = EchoFleet(module_procs, module_agent, service=f"inventory-{uuid.uuid4().hex[:6]}")
    pki.issue(fleet.service)
    pki.issue("cart")
    fleet.start("watched", env={**pki.tls_env(fleet.service), **QUIET_CHECKS})
    mesh = await mesh_as("cart")
    stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
    watch = stub.ServerStream(HELLO, metadata=WATCH, timeout=60)
    assert (await watch.read()).served_by == "watched"

    client_serial = pki.issue("cart")
    await watch_until(watch, rotation_logged(caplog, client_serial), "the client to load its new certificate")
    await watch_for(watch, 5 * channels.CLOSE_GRACE_S)

    assert (await stub.Echo(HELLO, timeout=5)).served_by == "watched"  # on a new channel, the new certificate
    await watch_for(watch, 0.2)
    watch.cancel()


async def test_connect_ca_leaves_renew_under_load_without_losing_a_call(
    procs: Processes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshlet.security.sources")
    agent = start_dev_agent(procs, "--leaf-cert-ttl", "5s")  # renewed at 60-90 % of its life: during the test
    fleet = EchoFleet(procs, agent, service=f"shipping-{uuid.uuid4().hex[:6]}")
    server = fleet.start("connect", env={"MESHLET_TLS__SOURCE": "consul", **QUIET_CHECKS})
    port = fleet.ports["connect"]
    ca, cert, key, trust_domain = connect_files(agent, "observer", tmp_path)
    server_name = identity_dns_name(fleet.service, "default", "dc1", trust_domain)
    first = await served_serial(port, ca, cert, key, server_name)

    async def new_server_serial() -> bool:
        return await served_serial(port, ca, cert, key, server_name) != first

    config = load_config(
        None,
        env={"CONSUL_HTTP_ADDR": agent.url},
        overrides={"service": {"name": "gateway"}, "tls": {"source": "consul"}},
    )
    async with Mesh(config) as mesh:
        retries = retries_of(mesh)
        stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
        async with Load(stub) as load:
            await load.more(20)
            await eventually(new_server_serial, "the server's leaf to be renewed")
            await eventually(rotation_logged(caplog, "(gateway)"), "the client's leaf to be renewed")
            await load.more(20)

    assert load.failures == []
    assert retries == [], "not even an attempt failed"
    assert server.alive()


def connect_files(agent: Agent, service: str, folder: Path) -> tuple[Path, Path, Path, str]:
    """`service`'s Connect CA leaf, its key and the roots as PEM files, for Python's ssl; and the trust domain."""
    leaf = agent.get(f"/v1/agent/connect/ca/leaf/{service}")
    roots = agent.get("/v1/agent/connect/ca/roots")
    paths = folder / f"{service}.crt", folder / f"{service}.key", folder / "roots.crt"
    paths[0].write_text(leaf["CertPEM"])
    paths[1].write_text(leaf["PrivateKeyPEM"])
    paths[2].write_text("".join(root["RootCert"] for root in roots["Roots"]))
    return paths[2], paths[0], paths[1], str(roots["TrustDomain"])
