"""The L4 inbound hop (``sidecar.inbound_mode: l4``), with real processes on loopback:

    app A (this test) -> sidecar A (outbound, L7) ==mTLS==> sidecar B (inbound, L4 splice) -> app B (plain grpcio)

Sidecar B terminates mTLS, authorizes the caller's identity once per connection and splices the bytes to app B:
what app A sees is what app B answered, for every RPC kind, with metadata, trailers, errors with details and
deadlines, as through the L7 listener. A caller the intentions deny never reaches app B and is answered as the L7
listener answers it: PERMISSION_DENIED with ErrorInfo INTENTION_DENIED and a message saying how to allow it (a
client whose mesh certificate names no service: UNAUTHENTICATED), counted on sidecar B's /metrics with the
connections it let through. One without a mesh certificate is refused in the handshake. A config that asks l4 of
a port with per-method rules or rate limits exits 2.
"""

from __future__ import annotations

import asyncio
import datetime
import signal
import ssl
import time
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from meshlet.errors import ErrorReason, error_info
from meshlet.inbound import InboundParts
from meshlet.security.certs import channel_options
from meshlet.security.dev_ca import issue
from meshlet.security.intentions import Decision
from meshlet.security.sources import FileSource
from meshlet_api.echo.v1 import echo_pb2_grpc
from meshlet_sidecar.splice import SpliceListener
from tests.integration import sidecar_mesh
from tests.integration.sidecar_mesh import TRUST_DOMAIN, clear_records, inbound_config, outbound_config, started
from tests.support.agents import Agent
from tests.support.echo_calls import ECHO_METADATA, EVERY_KIND, WAIT_S, Invoke, request
from tests.support.plain_app import ERROR_REASON, PlainEchoApp
from tests.support.processes import Processes, free_port
from tests.support.sidecars import (
    SidecarProcess,
    admin_get,
    one_line,
    run_sidecar,
    tls_files,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

# The shared mesh's fixtures, made this module's own (module-scoped). Assigned rather than imported by name,
# as the parameters of the same names would shadow an unused import (ruff F811).
module_procs = sidecar_mesh.module_procs
pki = sidecar_mesh.pki
agent = sidecar_mesh.agent
app_b = sidecar_mesh.app_b
echo = sidecar_mesh.echo


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("l4")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_b(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, app_b: PlainEchoApp
) -> SidecarProcess:
    config = inbound_config(pki, agent, "b-svc", inbound_mode="l4")
    return await started(module_procs, folder, "b", config, app=f"127.0.0.1:{app_b.port}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_a(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, sidecar_b: SidecarProcess
) -> SidecarProcess:
    return await started(module_procs, folder, "a", outbound_config(pki, agent, "a-svc"))


@pytest.fixture(autouse=True)
def fresh_app_records(app_b: PlainEchoApp) -> None:
    clear_records(app_b)


async def test_unary_call_crosses_the_l4_hop_with_its_metadata_and_trailers(
    echo: echo_pb2_grpc.EchoStub, app_b: PlainEchoApp
) -> None:
    call = echo.Echo(request("spliced"), metadata=ECHO_METADATA, timeout=WAIT_S)
    assert (await call).message == "spliced"
    initial, trailing = dict(await call.initial_metadata()), dict(await call.trailing_metadata())
    assert (initial["initial-x-tenant"], trailing["trailing-x-blob-bin"]) == ("acme", b"\x00\xffbytes")
    assert app_b.seen[-1].metadata["x-tenant"] == "acme"


@pytest.mark.parametrize("invoke", EVERY_KIND.values(), ids=EVERY_KIND.keys())
async def test_every_kind_crosses_the_l4_hop(echo: echo_pb2_grpc.EchoStub, invoke: Invoke) -> None:
    assert await invoke(echo, ECHO_METADATA)


# Errors only where app A does not write while app B fails: a plain grpc.aio client still writing its stream when
# the call ends may see grpc's own INTERNAL "Internal error from Core" instead (transport/streams.py), whatever
# the hops in between, and a hop as fast as a splice makes that race likelier.
@pytest.mark.parametrize("kind", ["unary", "server"])
async def test_errors_with_details_cross_the_l4_hop(echo: echo_pb2_grpc.EchoStub, kind: str) -> None:
    invoke = EVERY_KIND[kind]
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await invoke(echo, (("x-echo-fail", "FAILED_PRECONDITION"),))
    error = failed.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(error.trailing_metadata())["x-app-trailer"] == "failed"
    status = rpc_status.from_call(error)
    assert status is not None
    assert ERROR_REASON.encode() in status.details[0].value


async def test_app_as_deadline_reaches_app_b_and_expiring_cancels_its_call(
    echo: echo_pb2_grpc.EchoStub, app_b: PlainEchoApp
) -> None:
    await echo.Echo(request("when?"), timeout=3.0)
    remaining = app_b.seen[-1].time_remaining
    assert remaining is not None
    assert 2.0 < remaining <= 3.0 * 1.01**3
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await echo.Echo(request("slow"), metadata=(("x-echo-hang", "1"),), timeout=1.0)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(app_b.cancellation.wait(), WAIT_S)


def assert_denied(error: grpc.aio.AioRpcError, method: str) -> None:
    """PERMISSION_DENIED as the L7 Authorize stage words it: who, what, and how to allow it."""
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
    info = error_info(error)
    assert info is not None, error.trailing_metadata()
    assert info.reason == ErrorReason.INTENTION_DENIED
    assert (info.metadata["target"], info.metadata["method"]) == ("b-svc", method)
    assert info.metadata["caller"].endswith("/svc/c-svc")
    assert "'c-svc'" in (error.details() or "")
    assert "to allow it, add {from: c-svc, to: b-svc" in (error.details() or "")


async def test_a_caller_the_intentions_deny_gets_permission_denied_through_its_sidecar(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, sidecar_b: SidecarProcess, app_b: PlainEchoApp
) -> None:
    """Not a closed connection, which sidecar C would take for a call that never left and retry until the
    deadline: the status comes from sidecar B, and the deadline is far (the status says which it was)."""
    sidecar_c = await started(module_procs, folder, "c", outbound_config(pki, agent, "c-svc"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar_c.outbound_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await echo_pb2_grpc.EchoStub(channel).EchoOnce(request("let me in"), timeout=30.0)
    assert_denied(failed.value, "/meshlet_api.echo.v1.Echo/EchoOnce")
    assert app_b.seen == []
    give_up = time.monotonic() + WAIT_S  # the log line may trail the call by a moment on a busy machine
    while "denied c-svc -> b-svc /meshlet_api.echo.v1.Echo/EchoOnce" not in sidecar_b.output():
        assert time.monotonic() < give_up, sidecar_b.output()[-3000:]
        await asyncio.sleep(0.1)


def direct_client(port: int, pki: Path, service: str) -> grpc.aio.Channel:
    """A plain grpc client holding `service`'s mesh certificate, on a connection of its own to sidecar B."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / f"{service}.key").read_bytes(),
        certificate_chain=(pki / f"{service}.crt").read_bytes(),
    )
    options = (*channel_options("b-svc", "default", "dc1", TRUST_DOMAIN), ("grpc.use_local_subchannel_pool", 1))
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options)


# Not the client-streaming kinds: a plain grpc.aio client still writing when the call ends may see grpc's own
# INTERNAL instead (see above), and a refusal ends the call at once.
@pytest.mark.parametrize("kind", ["unary", "server"])
async def test_a_denied_plain_client_gets_permission_denied_for_every_call_on_its_connection(
    sidecar_b: SidecarProcess, pki: Path, app_b: PlainEchoApp, kind: str
) -> None:
    assert sidecar_b.inbound_port is not None
    method = {"unary": "Echo", "server": "ServerStream"}[kind]
    async with direct_client(sidecar_b.inbound_port, pki, "c-svc") as channel:
        for _ in range(2):  # the connection stays open: a second call is answered the same
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await EVERY_KIND[kind](echo_pb2_grpc.EchoStub(channel), ())
            assert_denied(failed.value, f"/meshlet_api.echo.v1.Echo/{method}")
    assert app_b.seen == []


def issue_without_a_service(pki: Path, name: str) -> None:
    """A leaf the mesh CA signed whose URI SAN is a SPIFFE ID naming no service: the handshake accepts it, the
    identity check does not."""
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/{name}")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (pki / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


async def test_a_mesh_certificate_that_names_no_service_gets_unauthenticated(
    sidecar_b: SidecarProcess, pki: Path, app_b: PlainEchoApp
) -> None:
    assert sidecar_b.inbound_port is not None
    issue_without_a_service(pki, "nobody")
    async with direct_client(sidecar_b.inbound_port, pki, "nobody") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await echo_pb2_grpc.EchoStub(channel).Echo(request("who am I"), timeout=WAIT_S)
    error = failed.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    info = error_info(error)
    assert info is not None
    assert info.reason == ErrorReason.UNAUTHENTICATED
    assert "does not name a service" in (error.details() or "")
    assert "meshlet certs issue" in (error.details() or "")
    assert app_b.seen == []


class Switch:
    """An authorizer the test flips, as an operator changes Consul's intentions while connections stay open."""

    def __init__(self) -> None:
        self.allowed = False

    def decide_now(self, peer_uri: str | None, destination: str, method: str) -> Decision:
        return Decision(self.allowed, f"the test's switch is {'on' if self.allowed else 'off'}")

    async def decide(self, peer_uri: str | None, destination: str, method: str) -> Decision:
        return self.decide_now(peer_uri, destination, method)

    def remedy(self, source: str, destination: str, method: str) -> str:
        return "to allow it, flip the test's switch"


async def echo_once(stub: echo_pb2_grpc.EchoStub, message: str) -> str | grpc.StatusCode:
    """The reply's message, or the failed call's status."""
    try:
        reply = await stub.Echo(request(message), timeout=WAIT_S)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return str(reply.message)


async def test_a_refused_connection_the_intentions_now_allow_is_closed_and_the_next_one_reaches_the_app(
    pki: Path, app_b: PlainEchoApp
) -> None:
    """The decision is made once per connection: when it goes stale, the call that finds out is told to call
    again, and the connection is closed so that the caller's next one is authorized afresh."""
    switch = Switch()
    source = FileSource(pki / "b-svc.crt", pki / "b-svc.key", pki / "ca.crt")
    await source.start()
    parts = InboundParts(service="b-svc", require_identity=True, authorizer=switch)
    listener = SpliceListener(
        f"127.0.0.1:{free_port()}",
        source=source,
        parts=parts,
        app_address=f"127.0.0.1:{app_b.port}",
        clock=time.monotonic,
    )
    try:
        port = await listener.start()
        async with direct_client(port, pki, "c-svc") as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Echo(request("not yet"), timeout=WAIT_S)
            assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
            switch.allowed = True
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Echo(request("now?"), timeout=WAIT_S)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "call again" in (failed.value.details() or "")
            give_up = time.monotonic() + WAIT_S
            while (answer := await echo_once(stub, "now")) != "now":  # a call sent before the stale connection
                assert answer == grpc.StatusCode.UNAVAILABLE, answer  # is closed fails with it, UNAVAILABLE
                assert time.monotonic() < give_up, "the stale connection was never closed"
                await asyncio.sleep(0.05)
            assert [seen.method for seen in app_b.seen] == ["Echo"], app_b.seen
    finally:
        await listener.stop(0)
        await source.stop()


def scrape(sidecar: SidecarProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = admin_get(f"{sidecar.admin_url}/metrics")
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_the_l4_connections_by_outcome_and_the_denials_by_caller(
    echo: echo_pb2_grpc.EchoStub, sidecar_b: SidecarProcess, pki: Path
) -> None:
    assert sidecar_b.inbound_port is not None
    assert (await echo.Echo(request("counted"), timeout=WAIT_S)).message == "counted"
    async with direct_client(sidecar_b.inbound_port, pki, "c-svc") as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await echo_pb2_grpc.EchoStub(channel).Echo(request("counted too"), timeout=WAIT_S)
    seen = scrape(sidecar_b)

    def value(name: str, **labels: str) -> float:
        return seen.get((name, frozenset({"service": "b-svc", **labels}.items())), 0.0)

    assert value("meshlet_l4_connections_total", caller="a-svc", outcome="allowed") >= 1
    assert value("meshlet_l4_connections_total", caller="c-svc", outcome="denied") >= 1
    assert value("meshlet_l4_connections_total", caller="c-svc", outcome="allowed") == 0
    assert value("meshlet_authz_denials_total", caller="c-svc") >= 1
    assert value("meshlet_authz_denials_total", caller="a-svc") == 0


async def test_a_plaintext_client_is_refused(sidecar_b: SidecarProcess, app_b: PlainEchoApp) -> None:
    assert sidecar_b.inbound_port is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar_b.inbound_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await echo_pb2_grpc.EchoStub(channel).Echo(request("plain"), timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert app_b.seen == []


async def served_certificate(port: int, pki: Path) -> bytes:
    """The certificate sidecar B presents on a new connection (DER), to a client with a-svc's certificate."""
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.check_hostname = False  # the identity DNS SAN is checked by the sidecars; here only the bytes matter
    context.load_cert_chain(pki / "a-svc.crt", pki / "a-svc.key")
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return der


async def test_a_rotated_certificate_is_served_to_new_connections_without_a_restart(
    echo: echo_pb2_grpc.EchoStub, sidecar_b: SidecarProcess, pki: Path
) -> None:
    """Last in this module: it replaces b-svc's certificate for good."""
    assert sidecar_b.inbound_port is not None
    before = await served_certificate(sidecar_b.inbound_port, pki)
    issue(pki, "b-svc")  # a new key and serial in the same files, as a cert-manager renewal writes them
    give_up = time.monotonic() + WAIT_S
    while await served_certificate(sidecar_b.inbound_port, pki) == before:
        assert time.monotonic() < give_up, "sidecar B still presents the old certificate"
        await asyncio.sleep(0.2)
    assert (await echo.Echo(request("after rotation"), timeout=WAIT_S)).message == "after rotation"
    assert sidecar_b.child.alive()


async def test_the_private_key_is_never_written_to_disk_while_running_nor_left_by_a_sigkill(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, app_b: PlainEchoApp
) -> None:
    """Python's ssl loads a key only from a file: the splice hands it an in-memory one. Its temporary folder (the
    place a file would go) holds nothing of the key while the sidecar serves, after a SIGKILL, and after the next
    start."""
    issue(pki, "k-svc")
    key = (pki / "k-svc.key").read_bytes()
    temporary = folder / "k-tmp"
    temporary.mkdir()

    def key_on_disk() -> list[Path]:
        return [path for path in temporary.rglob("*") if path.is_file() and key.strip() in path.read_bytes()]

    config = inbound_config(pki, agent, "k-svc", inbound_mode="l4")
    for attempt in ("first", "after a SIGKILL"):
        sidecar = await started(
            module_procs, folder, "k", config, app=f"127.0.0.1:{app_b.port}", env={"TMPDIR": str(temporary)}
        )
        assert key_on_disk() == [], attempt
        assert sorted(temporary.iterdir()) == [], attempt  # nor anything else
        sidecar.child.signal(signal.SIGKILL)
        sidecar.child.wait(WAIT_S)
        assert key_on_disk() == [], attempt


async def test_l4_on_a_port_with_rate_limits_exits_2_naming_the_field(
    module_procs: Processes, pki: Path, tmp_path: Path
) -> None:
    config = {
        "service": {"name": "b-svc"},
        "tls": tls_files(pki, "b-svc"),
        "rate_limit": {"per_caller": {"rate_per_s": 10}},
        "sidecar": {"inbound_mode": "l4"},
    }
    path = write_config(tmp_path / "bad.yaml", config)
    flags = ("--config", str(path), "--admin-addr", f"127.0.0.1:{free_port()}")
    code, output = await asyncio.to_thread(run_sidecar, module_procs, *flags)
    assert code == 2, output
    assert one_line(output), output
    assert "sidecar.inbound_mode" in output
    assert "rate_limit" in output
