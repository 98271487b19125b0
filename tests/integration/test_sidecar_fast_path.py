"""The sidecar's unary fast path, with real processes on loopback:

    app A (this test) -> sidecar A (outbound) ==mTLS==> sidecar B (inbound) -> app B (plain grpcio, reflection on)
                                              ==mTLS==> sidecar C (inbound) -> app C (plain grpcio, no reflection)

Sidecar B learns app B's methods from app B's reflection service; sidecar A learns b-svc's through the mesh
(b-svc's reflection, behind sidecar B). Sidecar C has no reflection to ask, but a descriptor set in its config.
A unary method known as unary is served by a unary handler on both sides (the admin's
``meshlet_sidecar_calls_total{handler="unary"}`` counts them); everything else takes the generic stream path,
and both behave the same for app A: replies, metadata, trailers, errors with details, deadlines. Idempotency
comes from the learnt descriptors too: sidecar A re-sends Echo (IDEMPOTENT) but never EchoOnce.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration import sidecar_mesh
from tests.integration.sidecar_mesh import ECHO_SERVICE, clear_records, inbound_config, outbound_config, started
from tests.support.agents import Agent
from tests.support.echo_calls import ECHO_METADATA, WAIT_S, request
from tests.support.plain_app import ERROR_REASON, PlainEchoApp, plain_app
from tests.support.processes import Processes, free_port
from tests.support.sidecars import (
    SidecarProcess,
    admin_get,
    local_port_flag,
    one_line,
    run_sidecar,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

NO_BREAKER = {"failures": 1000}  # the retry test sends failing calls: no breaker may eject app B for the tests after


# ------------------------------------------------------------------------------------------ the mesh

# The shared mesh's fixtures, made this module's own (module-scoped). Assigned rather than imported by name,
# as the parameters of the same names would shadow an unused import (ruff F811).
module_procs = sidecar_mesh.module_procs
pki = sidecar_mesh.pki
agent = sidecar_mesh.agent
echo = sidecar_mesh.echo
sidecar_b = sidecar_mesh.sidecar_b


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fast-path")


@pytest.fixture(scope="module")
def echo_descriptor_set(folder: Path) -> Path:
    """echo.proto as ``protoc --descriptor_set_out`` writes it."""
    file = descriptor_pb2.FileDescriptorProto()
    echo_pb2.DESCRIPTOR.CopyToProto(file)
    path = folder / "echo.protoset"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString())
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app_b() -> AsyncIterator[PlainEchoApp]:
    """This module's own app B (not the shared mesh's): it serves reflection."""
    async with plain_app(with_reflection=True) as app:
        yield app


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app_c() -> AsyncIterator[PlainEchoApp]:
    async with plain_app() as app:
        yield app


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_c(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, app_c: PlainEchoApp, echo_descriptor_set: Path
) -> SidecarProcess:
    config = inbound_config(pki, agent, "c-svc", descriptor_sets=[str(echo_descriptor_set)], reflection=False)
    return await started(module_procs, folder, "c", config, app=f"127.0.0.1:{app_c.port}")


@pytest.fixture(scope="module")
def c_port() -> int:
    return free_port()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_a(
    module_procs: Processes,
    folder: Path,
    pki: Path,
    agent: Agent,
    sidecar_b: SidecarProcess,
    sidecar_c: SidecarProcess,
    c_port: int,
) -> SidecarProcess:
    """Routes Echo to b-svc and its local port to c-svc; no retry.idempotent patterns: only protos say so."""
    upstreams = {"b-svc": {"breaker": NO_BREAKER}, "c-svc": {"breaker": NO_BREAKER}}
    config = outbound_config(pki, agent, "a-svc", upstreams=upstreams)
    return await started(module_procs, folder, "a", config, flags=local_port_flag("c-svc", c_port))


@pytest.fixture(autouse=True)
def fresh_app_records(app_b: PlainEchoApp, app_c: PlainEchoApp) -> None:
    clear_records(app_b, app_c)


# ------------------------------------------------------------------------------------------ which handler served


def calls_served(sidecar: SidecarProcess) -> dict[tuple[str, str], int]:
    """(side, handler) -> calls, from the sidecar's /metrics."""
    status, text = admin_get(sidecar.admin_url + "/metrics")
    assert status == 200, text
    counts = {}
    for labels, count in re.findall(r"^meshlet_sidecar_calls_total\{(.*)\} (\S+)$", text, re.MULTILINE):
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        counts[label["side"], label["handler"]] = int(float(count))
    return counts


async def served(sidecar: SidecarProcess) -> dict[tuple[str, str], int]:
    return await asyncio.to_thread(calls_served, sidecar)


@pytest_asyncio.fixture(loop_scope="module")
async def learnt(echo: echo_pb2_grpc.EchoStub, sidecar_a: SidecarProcess, sidecar_b: SidecarProcess) -> None:
    """Calls until both sidecars serve Echo as unary: until then calls work, on the generic path."""
    give_up = time.monotonic() + 3 * WAIT_S
    while True:
        assert (await echo.Echo(request("warm"), timeout=WAIT_S)).message == "warm"
        a, b = await served(sidecar_a), await served(sidecar_b)
        if a[("outbound", "unary")] and b[("inbound", "unary")]:
            return
        assert time.monotonic() < give_up, f"the fast path never engaged: A {a}, B {b}"
        await asyncio.sleep(0.2)


def delta(after: dict[tuple[str, str], int], before: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


# ------------------------------------------------------------------------------------------ the fast path


@pytest.mark.usefixtures("learnt")
async def test_unary_call_takes_the_unary_path_on_both_sidecars_with_its_metadata_and_trailers(
    echo: echo_pb2_grpc.EchoStub, sidecar_a: SidecarProcess, sidecar_b: SidecarProcess, app_b: PlainEchoApp
) -> None:
    a, b = await served(sidecar_a), await served(sidecar_b)
    call = echo.Echo(echo_pb2.EchoRequest(message="fast", payload=b"\x00" * 1024), metadata=ECHO_METADATA)
    reply = await call
    assert (reply.message, reply.payload, reply.served_by) == ("fast", b"\x00" * 1024, "plain")
    initial, trailing = dict(await call.initial_metadata()), dict(await call.trailing_metadata())
    assert (initial["initial-x-tenant"], initial["initial-x-blob-bin"]) == ("acme", b"\x00\xffbytes")
    assert (trailing["trailing-x-tenant"], trailing["trailing-x-blob-bin"]) == ("acme", b"\x00\xffbytes")
    assert app_b.seen[-1].metadata["x-tenant"] == "acme"
    assert delta(await served(sidecar_a), a) == {("outbound", "unary"): 1}
    assert delta(await served(sidecar_b), b) == {("inbound", "unary"): 1}


@pytest.mark.usefixtures("learnt")
async def test_a_message_past_grpcs_default_4_mb_limit_crosses_both_sidecars_whole(
    sidecar_a: SidecarProcess, sidecar_b: SidecarProcess
) -> None:
    a, b = await served(sidecar_a), await served(sidecar_b)
    payload = bytes(range(256)) * 20_000  # 5 MB
    options = (("grpc.max_receive_message_length", 16 * 1024 * 1024),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar_a.outbound_port}", options=options) as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Echo(echo_pb2.EchoRequest(payload=payload), timeout=WAIT_S)
    assert reply.payload == payload
    assert delta(await served(sidecar_a), a) == {("outbound", "unary"): 1}
    assert delta(await served(sidecar_b), b) == {("inbound", "unary"): 1}


@pytest.mark.usefixtures("learnt")
async def test_app_b_error_crosses_the_unary_path_with_its_status_trailers_and_details(
    echo: echo_pb2_grpc.EchoStub, sidecar_a: SidecarProcess
) -> None:
    a = await served(sidecar_a)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await echo.Echo(request("x"), metadata=(("x-echo-fail", "FAILED_PRECONDITION"),), timeout=WAIT_S)
    error = failed.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "failed as asked (FAILED_PRECONDITION)" in (error.details() or "")
    assert dict(error.trailing_metadata())["x-app-trailer"] == "failed"
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == ERROR_REASON
    assert delta(await served(sidecar_a), a) == {("outbound", "unary"): 1}


@pytest.mark.usefixtures("learnt")
async def test_deadline_on_the_unary_path_reaches_app_b_and_its_expiry_cancels_app_bs_call(
    echo: echo_pb2_grpc.EchoStub, app_b: PlainEchoApp
) -> None:
    await echo.Echo(request("when?"), timeout=3.0)
    remaining = app_b.seen[-1].time_remaining
    assert remaining is not None
    assert 2.0 < remaining <= 3.0 * 1.01**3  # app A's deadline (grpc rounds it up a little per hop)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await echo.Echo(request("slow"), metadata=(("x-echo-hang", "1"),), timeout=1.0)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(app_b.cancellation.wait(), WAIT_S)
    assert app_b.cancelled == ["Echo"]


@pytest.mark.usefixtures("learnt")
async def test_idempotency_level_from_reflection_lets_the_sidecar_resend_echo_but_never_echo_once(
    echo: echo_pb2_grpc.EchoStub, app_b: PlainEchoApp
) -> None:
    unavailable = (("x-echo-fail", "UNAVAILABLE"),)
    app_b.seen.clear()  # the calls that warmed the fast path up
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await echo.Echo(request("again"), metadata=unavailable, timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [seen.method for seen in app_b.seen] == ["Echo"] * 3  # IDEMPOTENT: re-sent up to max_attempts
    app_b.seen.clear()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await echo.EchoOnce(request("once"), metadata=unavailable, timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [seen.method for seen in app_b.seen] == ["EchoOnce"]  # no idempotency_level: sent once


@pytest.mark.usefixtures("learnt")
async def test_streams_keep_the_generic_path(
    echo: echo_pb2_grpc.EchoStub, sidecar_a: SidecarProcess, sidecar_b: SidecarProcess
) -> None:
    a, b = await served(sidecar_a), await served(sidecar_b)
    call = echo.ServerStream(request("tick"), timeout=WAIT_S)
    assert [reply.message async for reply in call] == ["tick-0", "tick-1", "tick-2"]
    assert delta(await served(sidecar_a), a) == {("outbound", "generic"): 1}
    assert delta(await served(sidecar_b), b) == {("inbound", "generic"): 1}


@pytest.mark.usefixtures("learnt")
async def test_a_call_without_deadline_gets_the_policy_timeout_when_unary_and_none_when_known_to_be_a_stream(
    echo: echo_pb2_grpc.EchoStub, app_b: PlainEchoApp
) -> None:
    await echo.Echo(request("no deadline"))
    unary_remaining = app_b.seen[-1].time_remaining
    assert unary_remaining is not None
    assert unary_remaining <= 5.0 * 1.01**3  # upstreams.b-svc.timeout, the default 5 s
    assert [reply.message async for reply in echo.ServerStream(request("long"))] == ["long-0", "long-1", "long-2"]
    stream_remaining = app_b.seen[-1].time_remaining
    assert stream_remaining is None or stream_remaining > 3600  # not capped by the unary timeout


# ------------------------------------------------------------------------------------------ other sources


async def test_descriptor_set_in_config_gives_the_unary_path_from_the_first_call_and_unknown_methods_still_work(
    sidecar_a: SidecarProcess, sidecar_c: SidecarProcess, c_port: int, app_c: PlainEchoApp
) -> None:
    """Sidecar C knows Echo from its descriptor set; sidecar A cannot learn c-svc's methods (app C serves no
    reflection), so its calls to c-svc take the generic path, and work the same."""
    a, c = await served(sidecar_a), await served(sidecar_c)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{c_port}") as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Echo(request("via c"), metadata=ECHO_METADATA, timeout=WAIT_S)
        assert reply.message == "via c"
        with pytest.raises(grpc.aio.AioRpcError) as failed:  # a path nobody declared: app C's own answer
            await channel.unary_unary(f"/{ECHO_SERVICE}/Missing")(b"", timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert [seen.method for seen in app_c.seen] == ["Echo"]
    assert delta(await served(sidecar_a), a) == {("outbound", "generic"): 2}
    at_c = delta(await served(sidecar_c), c)
    assert at_c[("inbound", "unary")] == 1
    assert at_c[("inbound", "generic")] >= 1  # Missing, and sidecar A asking c-svc's reflection in the background


async def test_a_descriptor_set_that_cannot_be_read_exits_2_naming_the_field(
    module_procs: Processes, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.protoset"
    garbage.write_bytes(b"\xff\xff not a descriptor set")
    for path, why in ((tmp_path / "missing.protoset", "cannot be read"), (garbage, "--descriptor_set_out")):
        config = write_config(tmp_path / "bad.yaml", {"sidecar": {"descriptor_sets": [str(path)]}})
        flags = ("--config", str(config), "--admin-addr", f"127.0.0.1:{free_port()}")
        code, output = await asyncio.to_thread(run_sidecar, module_procs, *flags)
        assert code == 2, output
        assert one_line(output), output
        assert "sidecar.descriptor_sets[0]" in output
        assert why in output
