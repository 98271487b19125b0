"""Two apps that know nothing of meshlet, talking through two sidecar processes, on loopback:

    app A (this test, plain grpcio) -> sidecar A (outbound) ==mTLS==> sidecar B (inbound) -> app B (plain grpcio)

Sidecar B registers b-svc in a dev agent; sidecar A finds it there and routes to it by the route map (gRPC
service name) or by a local port. What app A sees is what app B answered, whatever the RPC kind: messages,
metadata both ways, trailers, errors with their details; app B sees app A's deadline, and app A cancelling
reaches app B. Sidecar B admits only callers with a certificate from the mesh's CA that its intentions allow.

One setup for the module (agent, app B in this process, three sidecars), so each test makes only its calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from meshlet.errors import ErrorReason, error_info
from meshlet.security.certs import channel_options
from meshlet.security.dev_ca import init_ca, issue
from meshlet_api.echo.v1 import echo_pb2_grpc
from tests.integration import sidecar_mesh
from tests.integration.sidecar_mesh import ECHO_SERVICE, TRUST_DOMAIN, clear_records, outbound_config, started
from tests.support import echo_calls
from tests.support.agents import Agent
from tests.support.echo_calls import EVERY_KIND, WAIT_S, Invoke, request
from tests.support.plain_app import PlainEchoApp
from tests.support.processes import Processes, eventually, free_port
from tests.support.sidecars import SidecarProcess, admin_get, local_port_flag

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

# ------------------------------------------------------------------------------------------ the shared mesh

# The shared mesh's fixtures, made this module's own (module-scoped). Assigned rather than imported by name,
# as the parameters of the same names would shadow an unused import (ruff F811).
module_procs = sidecar_mesh.module_procs
pki = sidecar_mesh.pki
agent = sidecar_mesh.agent
app_b = sidecar_mesh.app_b
sidecar_b = sidecar_mesh.sidecar_b


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sidecars")


def retrying_outbound_config(pki: Path, agent: Agent, service: str) -> dict[str, Any]:
    """An outbound-only sidecar for `service` that routes the Echo service to b-svc, and may re-send its calls."""
    return outbound_config(pki, agent, service, upstreams={"b-svc": {"retry": {"idempotent": [f"/{ECHO_SERVICE}/*"]}}})


@pytest.fixture(scope="module")
def local_port() -> int:
    return free_port()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_a(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, sidecar_b: SidecarProcess, local_port: int
) -> SidecarProcess:
    """a-svc's sidecar: the route map on its outbound port, and b-svc on a local port of its own (a flag)."""
    config = retrying_outbound_config(pki, agent, "a-svc")
    return await started(module_procs, folder, "a", config, flags=local_port_flag("b-svc", local_port))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_c(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, sidecar_b: SidecarProcess
) -> SidecarProcess:
    """c-svc's sidecar, configured just like a-svc's: only b-svc's intentions tell them apart."""
    return await started(module_procs, folder, "c", retrying_outbound_config(pki, agent, "c-svc"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def careful_a(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, sidecar_b: SidecarProcess
) -> SidecarProcess:
    """Another a-svc sidecar, whose Echo methods are only as idempotent as the proto says: EchoOnce is not."""
    return await started(module_procs, folder, "a-careful", outbound_config(pki, agent, "a-svc"))


@pytest.fixture(autouse=True)
def fresh_app_records(app_b: PlainEchoApp) -> None:
    clear_records(app_b)


@contextlib.asynccontextmanager
async def dial(port: int) -> AsyncIterator[grpc.aio.Channel]:
    """App A's view: a plaintext channel to a sidecar port on localhost, a connection of its own."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=(("grpc.use_local_subchannel_pool", 1),)) as ch:
        yield ch


@pytest_asyncio.fixture(loop_scope="module")
async def echo(sidecar_a: SidecarProcess) -> AsyncIterator[echo_pb2_grpc.EchoStub]:
    """App A's Echo stub, dialling sidecar A's outbound port (routed by the route map)."""
    async with dial(sidecar_a.outbound_port) as channel:
        yield echo_pb2_grpc.EchoStub(channel)


# ------------------------------------------------------------------------------------------ four kinds


async def test_unary_call_crosses_both_sidecars_with_its_metadata_and_trailers(
    echo: echo_pb2_grpc.EchoStub, app_b: PlainEchoApp
) -> None:
    await echo_calls.assert_unary_relayed(echo, app_b)


async def test_server_stream_delivers_every_message_and_the_metadata(echo: echo_pb2_grpc.EchoStub) -> None:
    await echo_calls.assert_server_stream_relayed(echo)


async def test_client_stream_delivers_every_request(echo: echo_pb2_grpc.EchoStub) -> None:
    await echo_calls.assert_client_stream_relayed(echo)


async def test_bidi_stream_answers_each_request_before_the_caller_is_done(echo: echo_pb2_grpc.EchoStub) -> None:
    await echo_calls.assert_bidi_stream_relayed(echo)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("invoke", EVERY_KIND.values(), ids=EVERY_KIND.keys())
async def test_app_b_error_reaches_app_a_with_its_status_message_trailers_and_details(
    echo: echo_pb2_grpc.EchoStub, invoke: Invoke
) -> None:
    await echo_calls.assert_app_error_relayed(invoke, echo)


@pytest.mark.parametrize(
    "details",
    [
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused",
        "sendmsg: Broken pipe",
    ],
)
async def test_app_bs_answer_that_passes_on_a_connection_error_is_its_answer_and_runs_once(
    careful_a: SidecarProcess, app_b: PlainEchoApp, details: str
) -> None:
    """App B ran EchoOnce (not idempotent) and passed a downstream's connection error on: sidecar B relays it
    as app B's answer, not as "the app did not take the call", and sidecar A does not re-send it."""
    metadata = (("x-echo-fail", "UNAVAILABLE"), ("x-echo-fail-details", details))
    async with dial(careful_a.outbound_port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await echo_pb2_grpc.EchoStub(channel).EchoOnce(request("once"), metadata=metadata, timeout=WAIT_S)

    assert (failed.value.code(), failed.value.details()) == (grpc.StatusCode.UNAVAILABLE, details)
    info = error_info(failed.value)
    assert info is None or info.reason != ErrorReason.NO_HEALTHY_ENDPOINT
    assert [seen.method for seen in app_b.seen] == ["EchoOnce"]


async def test_app_b_passing_on_its_own_sidecars_refusal_is_answered_upstream_failed(
    careful_a: SidecarProcess, app_b: PlainEchoApp
) -> None:
    """App B's own outbound call was refused (its sidecar said NO_HEALTHY_ENDPOINT) and app B passed that on:
    sidecar B answers UPSTREAM_FAILED, so sidecar A neither re-sends the (idempotent) Echo nor blames b-svc."""
    metadata = (("x-echo-fail", "UNAVAILABLE"), ("x-echo-fail-meshlet", "NO_HEALTHY_ENDPOINT"))
    async with dial(careful_a.outbound_port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await echo_pb2_grpc.EchoStub(channel).Echo(request("deeper"), metadata=metadata, timeout=WAIT_S)

    assert failed.value.code() == grpc.StatusCode.ABORTED
    info = error_info(failed.value)
    assert info is not None
    assert (info.reason, info.metadata["upstream"], info.metadata["upstream_reason"]) == (
        ErrorReason.UPSTREAM_FAILED,
        "c-svc",
        "NO_HEALTHY_ENDPOINT",
    )
    assert [seen.method for seen in app_b.seen] == ["Echo"]


# ------------------------------------------------------------------------------------------ deadlines and cancellation


# grpc's wire format may round a timeout up, by up to 1% per hop (timeout_encoding.h: 3 significant digits), and
# each of the three hops (app A -> sidecar A -> sidecar B -> app B) re-encodes what is left of it.
WIRE_ROUNDING = 1.01**3


@pytest.mark.parametrize("timeout", [3.0, 8.0], ids=["below-policy-timeout", "above-policy-timeout"])
async def test_app_b_sees_app_as_deadline_not_the_sidecars_policy_timeout(
    echo: echo_pb2_grpc.EchoStub, app_b: PlainEchoApp, timeout: float
) -> None:
    await echo.Echo(request("when?"), timeout=timeout)
    remaining = app_b.seen[-1].time_remaining
    assert remaining is not None
    assert 0 < remaining <= timeout * WIRE_ROUNDING
    assert remaining > timeout - 1.0  # app A's deadline, not upstreams.b-svc.timeout (5s, for calls without one)


async def test_app_as_deadline_expiring_cancels_app_bs_call(echo: echo_pb2_grpc.EchoStub, app_b: PlainEchoApp) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await echo.Echo(request("slow"), metadata=(("x-echo-hang", "1"),), timeout=1.0)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(app_b.cancellation.wait(), WAIT_S)
    assert app_b.cancelled == ["Echo"]


async def test_app_a_cancelling_a_stream_cancels_app_bs_call(echo: echo_pb2_grpc.EchoStub, app_b: PlainEchoApp) -> None:
    call = echo.BidiStream(metadata=(("x-echo-hang", "1"),))
    await call.write(request("first"))
    await eventually(lambda: bool(app_b.seen), "app B to receive the call")
    call.cancel()
    await asyncio.wait_for(app_b.cancellation.wait(), WAIT_S)
    assert app_b.cancelled == ["BidiStream"]


async def test_app_b_ending_a_stream_early_ends_app_as(echo: echo_pb2_grpc.EchoStub) -> None:
    call = echo.BidiStream(metadata=(("x-echo-end-after", "1"),), timeout=WAIT_S)
    await call.write(request("only one"))
    assert (await call.read()).message == "only one"
    assert await call.read() is grpc.aio.EOF  # app A never half-closed: app B's OK ended the call
    assert await call.code() == grpc.StatusCode.OK


# ------------------------------------------------------------------------------------------ routing


async def raw_call(port: int, method: str, payload: bytes = b"") -> bytes:
    """A unary call for any method path, bytes in and out, as an app that has no stub for it would make."""
    async with dial(port) as channel:
        reply: bytes = await channel.unary_unary(method)(payload, timeout=WAIT_S)
    return reply


async def test_call_for_an_unrouted_service_is_unavailable_naming_the_service(
    sidecar_a: SidecarProcess, app_b: PlainEchoApp
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await raw_call(sidecar_a.outbound_port, "/shop.inventory.v1.Inventory/Reserve")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shop.inventory.v1.Inventory" in (failed.value.details() or "")
    assert app_b.seen == []
    status, page = admin_get(sidecar_a.admin_url + "/metrics")  # an operator sees the misrouted calls counted
    assert status == 200
    assert "meshlet_sidecar_unrouted_calls_total 1.0" in page.splitlines()


async def test_local_port_routes_any_method_to_its_upstream(
    local_port: int, sidecar_a: SidecarProcess, app_b: PlainEchoApp
) -> None:
    async with dial(local_port) as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Echo(request("by port"), timeout=WAIT_S)
    assert reply.message == "by port"
    # A service no route names still reaches app B, which does not serve it: its answer, not the sidecar's.
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await raw_call(local_port, "/shop.inventory.v1.Inventory/Reserve")
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert [seen.method for seen in app_b.seen] == ["Echo"]


# ------------------------------------------------------------------------------------------ who gets in


async def test_sidecar_the_intentions_deny_gets_permission_denied_and_never_reaches_app_b(
    sidecar_c: SidecarProcess, app_b: PlainEchoApp
) -> None:
    async with dial(sidecar_c.outbound_port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await echo_pb2_grpc.EchoStub(channel).Echo(request("let me in"), timeout=WAIT_S)
    error = failed.value
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'c-svc'" in (error.details() or "")
    info = error_info(error)
    assert info is not None
    assert info.reason == ErrorReason.INTENTION_DENIED
    assert app_b.seen == []


def inbound_channel(port: int, certs: Path | None, service: str = "a-svc", trusted: Path | None = None) -> Any:
    """A client straight to a sidecar's inbound port: plaintext when `certs` is None, else presenting
    `service`'s certificate from `certs` and trusting `trusted` (default: the same CA)."""
    target = f"127.0.0.1:{port}"
    options = (("grpc.use_local_subchannel_pool", 1),)
    if certs is None:
        return grpc.aio.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=((trusted or certs) / "ca.crt").read_bytes(),
        private_key=(certs / f"{service}.key").read_bytes(),
        certificate_chain=(certs / f"{service}.crt").read_bytes(),
    )
    expect = channel_options("b-svc", "default", "dc1", TRUST_DOMAIN)
    return grpc.aio.secure_channel(target, credentials, options=(*options, *expect))


async def test_plaintext_client_to_sidecar_bs_inbound_port_is_refused(
    sidecar_b: SidecarProcess, app_b: PlainEchoApp
) -> None:
    assert sidecar_b.inbound_port is not None
    async with inbound_channel(sidecar_b.inbound_port, None) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await echo_pb2_grpc.EchoStub(channel).Echo(request("hi"), timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert app_b.seen == []


async def test_client_with_a_certificate_from_another_ca_is_refused(
    folder: Path, pki: Path, sidecar_b: SidecarProcess, app_b: PlainEchoApp
) -> None:
    assert sidecar_b.inbound_port is not None
    foreign = folder / "foreign"
    if not (foreign / "ca.crt").exists():
        init_ca(foreign, TRUST_DOMAIN)
    issue(foreign, "a-svc")  # the right name, from the wrong CA
    async with inbound_channel(sidecar_b.inbound_port, foreign, trusted=pki) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await echo_pb2_grpc.EchoStub(channel).Echo(request("hi"), timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert app_b.seen == []


async def test_mesh_client_with_an_allowed_identity_reaches_app_b_directly(
    pki: Path, sidecar_b: SidecarProcess
) -> None:
    """The control for the two refusals above: the same client with the mesh's own a-svc certificate."""
    assert sidecar_b.inbound_port is not None
    async with inbound_channel(sidecar_b.inbound_port, pki) as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Echo(request("hi"), timeout=WAIT_S)
    assert reply.message == "hi"
