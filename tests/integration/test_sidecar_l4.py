"""The L4 inbound hop (``sidecar.inbound_mode: l4``), with real processes on loopback:

    app A (this test) -> sidecar A (outbound, L7) ==mTLS==> sidecar B (inbound, L4 splice) -> app B (plain grpcio)

Sidecar B terminates mTLS, authorizes the caller's identity once per connection and splices the bytes to app B:
what app A sees is what app B answered, for every RPC kind, with metadata, trailers, errors with details and
deadlines, as through the L7 listener. A caller the intentions deny, or one without a mesh certificate, never
reaches app B; a config that asks l4 of a port with per-method rules or rate limits exits 2.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_status import rpc_status

from meshlet.security.dev_ca import init_ca, issue
from meshlet_api.echo.v1 import echo_pb2_grpc
from tests.support.agents import Agent, start_dev_agent
from tests.support.echo_calls import ECHO_METADATA, EVERY_KIND, WAIT_S, Invoke, request
from tests.support.plain_app import ERROR_REASON, PlainEchoApp, plain_app
from tests.support.processes import Processes, free_port, processes
from tests.support.sidecars import SidecarProcess, one_line, run_sidecar, start_sidecar, tls_files, write_config

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TRUST_DOMAIN = "meshlet.test"
ECHO_SERVICE = "meshlet_api.echo.v1.Echo"


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("l4")


@pytest.fixture(scope="module")
def pki(folder: Path) -> Path:
    certs = folder / "certs"
    init_ca(certs, TRUST_DOMAIN)
    for service in ("a-svc", "b-svc", "c-svc"):
        issue(certs, service)
    return certs


@pytest.fixture(scope="module")
def agent(module_procs: Processes) -> Agent:
    return start_dev_agent(module_procs)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app_b() -> AsyncIterator[PlainEchoApp]:
    async with plain_app() as app:
        yield app


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_b(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, app_b: PlainEchoApp
) -> SidecarProcess:
    config = {
        "service": {"name": "b-svc", "check_ttl": "2s", "drain_grace": "1s"},
        "consul": {"address": agent.url},
        "tls": tls_files(pki, "b-svc"),
        "authz": {"default": "deny", "rules": [{"from": "a-svc", "to": "b-svc", "action": "allow"}]},
        "sidecar": {"inbound_mode": "l4"},
    }
    return await asyncio.to_thread(start_sidecar, module_procs, folder, "b", config, app=f"127.0.0.1:{app_b.port}")


def outbound_config(pki: Path, agent: Agent, service: str) -> dict[str, Any]:
    return {
        "service": {"name": service},
        "consul": {"address": agent.url},
        "tls": tls_files(pki, service),
        "sidecar": {"routes": {ECHO_SERVICE: "b-svc"}},
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_a(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, sidecar_b: SidecarProcess
) -> SidecarProcess:
    return await asyncio.to_thread(start_sidecar, module_procs, folder, "a", outbound_config(pki, agent, "a-svc"))


@pytest_asyncio.fixture(loop_scope="module")
async def echo(sidecar_a: SidecarProcess) -> AsyncIterator[echo_pb2_grpc.EchoStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar_a.outbound_port}") as channel:
        yield echo_pb2_grpc.EchoStub(channel)


@pytest.fixture(autouse=True)
def fresh_app_records(app_b: PlainEchoApp) -> None:
    app_b.seen.clear()
    app_b.cancelled.clear()
    app_b.cancellation.clear()


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


async def test_a_caller_the_intentions_deny_never_reaches_app_b(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, sidecar_b: SidecarProcess, app_b: PlainEchoApp
) -> None:
    sidecar_c = await asyncio.to_thread(start_sidecar, module_procs, folder, "c", outbound_config(pki, agent, "c-svc"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar_c.outbound_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await echo_pb2_grpc.EchoStub(channel).EchoOnce(request("let me in"), timeout=5.0)
    # L4 has no status to send: the connection is closed, which sidecar C takes for a request that never left and
    # tries again (any method may be re-sent then) until the deadline.
    assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert app_b.seen == []
    give_up = time.monotonic() + WAIT_S  # the log line may trail the call by a moment on a busy machine
    while "denied c-svc -> b-svc (L4" not in sidecar_b.output():
        assert time.monotonic() < give_up, sidecar_b.output()[-3000:]
        await asyncio.sleep(0.1)


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
