"""A call the mesh refuses comes back as the refusal, every time, whatever its kind and however large its request:
PERMISSION_DENIED for an intention's denial, RESOURCE_EXHAUSTED over a rate limit, never INTERNAL, and a denial
does not count against the far endpoint's breaker. Driven through every refusal path there is:

    this test -> sidecar A (outbound) ==mTLS==> sidecar B (L7: unary fast path, stream path) -> app
                                      ==mTLS==> sidecar C (L4: its refusal server)            -> app
    this test -----------------------------------> an SDK server (Mesh.serve)

Regression: a server that ended a refused call before reading its request let a client still writing it see
grpc's own INTERNAL "Internal error from Core" instead of the refusal (measured before the fix, in two runs of
these 1,200 calls: 36 and 71 INTERNAL, on each of the three paths, nearly all bidi streams, a few client
streams). A refusing server now reads the request stream to its half-close (bounded) first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshlet.errors import ErrorReason, error_info
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration import sidecar_mesh
from tests.integration.sidecar_mesh import ECHO_SERVICE, inbound_config, outbound_config
from tests.integration.test_sidecar_fast_path import echo_descriptor_set as _echo_descriptor_set
from tests.support.agents import Agent
from tests.support.processes import Processes, free_port, wait_until
from tests.support.sidecars import PlainAppProcess, SidecarProcess, start_plain_app, start_sidecar, write_config

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

module_procs = sidecar_mesh.module_procs
pki = sidecar_mesh.pki
agent = sidecar_mesh.agent
echo_descriptor_set = _echo_descriptor_set

ECHO = f"/{ECHO_SERVICE}"
DENIED = ("Echo", "BidiStream")  # an intention denies these to the caller ...
LIMITED = ("EchoOnce", "ClientStream", "ServerStream")  # ... and lets it make one of these every 1,000 s
KINDS = ("Echo", "EchoOnce", "ServerStream", "ClientStream", "BidiStream")
# Request payloads: nothing, a few frames, past HTTP/2's initial 64 KiB window (writing waits for the reader).
PAYLOADS = (0, 1_000, 100_000, 1_000_000)
STREAMED_MESSAGES = 3
CALLS = 400  # per path: 1,200 in all
CONCURRENCY = 16
WAIT_S = 20.0  # a bound on failure, never a timing assertion

AUTHZ = {  # sidecar B's, for b-svc
    "default": "deny",
    "rules": [{"from": "a-svc", "to": "b-svc", "methods": [f"{ECHO}/{m}" for m in LIMITED], "action": "allow"}],
}
ONCE_IN_A_WHILE = {f"{ECHO}/{m}": {"rate_per_s": 0.001, "burst": 1} for m in LIMITED}
EXPECTED = {**dict.fromkeys(DENIED, "PERMISSION_DENIED"), **dict.fromkeys(LIMITED, "RESOURCE_EXHAUSTED")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("denials")


@pytest.fixture(scope="module")
def app(module_procs: Processes) -> PlainAppProcess:
    return start_plain_app(module_procs, "app")


@pytest.fixture(scope="module")
def l4_port() -> int:
    """Sidecar A's local port for c-svc, whose sidecar is L4."""
    return free_port()


@pytest.fixture(scope="module")
def sidecar_a(
    module_procs: Processes,
    folder: Path,
    pki: Path,
    agent: Agent,
    app: PlainAppProcess,
    echo_descriptor_set: Path,
    l4_port: int,
) -> SidecarProcess:
    """a-svc's sidecar, which routes the Echo service to b-svc (L7) and serves c-svc (L4) on `l4_port`."""
    l7 = inbound_config(pki, agent, "b-svc", descriptor_sets=[str(echo_descriptor_set)], reflection=False)
    l7 |= {"authz": AUTHZ, "rate_limit": {"per_method": ONCE_IN_A_WHILE}}
    start_sidecar(module_procs, folder, "b", l7, app=app.address)
    l4 = inbound_config(pki, agent, "c-svc", inbound_mode="l4") | {"authz": {"default": "deny", "rules": []}}
    start_sidecar(module_procs, folder, "c", l4, app=app.address)
    wait_until(lambda: all(agent.passing(s) for s in ("b-svc", "c-svc")), 30, "b-svc and c-svc to pass their checks")
    upstreams = {"b-svc": {}, "c-svc": {"local_port": l4_port}}
    return start_sidecar(module_procs, folder, "a", outbound_config(pki, agent, "a-svc", upstreams=upstreams))


@pytest.fixture(scope="module")
def sdk_server(module_procs: Processes, folder: Path, agent: Agent) -> int:
    """An echo server on meshlet's SDK (plaintext: its callers have no identity, so intentions name them ``*``)."""
    port = free_port()
    config = write_config(
        folder / "sdk.yaml",
        {
            "service": {"check_ttl": "2s"},
            "authz": {
                "default": "allow",
                "rules": [{"from": "*", "to": "sdk-svc", "methods": [f"{ECHO}/{m}" for m in DENIED], "action": "deny"}],
            },
            "rate_limit": {"per_method": ONCE_IN_A_WHILE},
        },
    )
    module_procs.start(
        [sys.executable, "-m", "tests.support.echo_server", "--name", "sdk", "--port", str(port)],
        name="sdk-server",
        env={"CONSUL_HTTP_ADDR": agent.url, "MESHLET_CONFIG": str(config), "MESHLET_SERVICE__NAME": "sdk-svc"},
    )
    wait_until(lambda: bool(agent.passing("sdk-svc")), 30, "the SDK server to pass its check")
    return port


def echo_request(size: int) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(message="refuse me", payload=b"\xa5" * size)


async def _stream(message: echo_pb2.EchoRequest) -> AsyncIterator[echo_pb2.EchoRequest]:
    for _ in range(STREAMED_MESSAGES):
        yield message


async def invoke(stub: echo_pb2_grpc.EchoStub, kind: str, size: int) -> Any:
    message = echo_request(size)
    if kind in ("Echo", "EchoOnce"):
        return await getattr(stub, kind)(message, timeout=WAIT_S)
    if kind == "ServerStream":
        return [reply async for reply in stub.ServerStream(message, timeout=WAIT_S)]
    if kind == "ClientStream":
        return await stub.ClientStream(_stream(message), timeout=WAIT_S)
    return [reply async for reply in stub.BidiStream(_stream(message), timeout=WAIT_S)]


async def outcome(stub: echo_pb2_grpc.EchoStub, kind: str, size: int) -> str:
    """``CODE/REASON`` of one call the mesh must refuse."""
    try:
        await invoke(stub, kind, size)
    except grpc.aio.AioRpcError as refused:
        info = error_info(refused)
        return f"{refused.code().name}/{info.reason if info else refused.details()}"
    return "OK"


async def refusals(target: str, *, limited: tuple[str, ...] = LIMITED) -> collections.Counter[tuple[str, str]]:
    """CALLS refused calls at `target`, CONCURRENCY at a time, cycling through KINDS and PAYLOADS: their
    outcomes by method. The one call each rate limit lets through (methods `limited`) is spent first."""
    options = (("grpc.max_send_message_length", -1), ("grpc.use_local_subchannel_pool", 1))
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for kind in limited:
            await invoke(stub, kind, 0)
        plan = list(itertools.islice(itertools.cycle(itertools.product(PAYLOADS, KINDS)), CALLS))
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(size: int, kind: str) -> tuple[str, str]:
            async with slots:
                return kind, await outcome(stub, kind, size)

        return collections.Counter(await asyncio.gather(*(one(size, kind) for size, kind in plan)))


def refused_as_expected(outcomes: collections.Counter[tuple[str, str]], expected: dict[str, str]) -> dict[str, int]:
    """The outcomes that are not the refusal `expected` by method (empty when every call was refused as it must)."""
    reasons = {"PERMISSION_DENIED": ErrorReason.INTENTION_DENIED, "RESOURCE_EXHAUSTED": ErrorReason.RATE_LIMITED}
    return {
        f"{kind}: {got}": count
        for (kind, got), count in outcomes.items()
        if got != f"{expected[kind]}/{reasons[expected[kind]]}"
    }


async def test_refusals_at_the_far_l7_sidecar_come_back_as_the_refusal_every_time(
    sidecar_a: SidecarProcess,
) -> None:
    outcomes = await refusals(f"127.0.0.1:{sidecar_a.outbound_port}")

    assert refused_as_expected(outcomes, EXPECTED) == {}, outcomes


async def test_denials_at_the_far_l4_sidecar_come_back_as_the_denial_every_time(
    sidecar_a: SidecarProcess, l4_port: int
) -> None:
    outcomes = await refusals(f"127.0.0.1:{l4_port}", limited=())

    assert refused_as_expected(outcomes, dict.fromkeys(KINDS, "PERMISSION_DENIED")) == {}, outcomes


async def test_refusals_at_an_sdk_server_come_back_as_the_refusal_every_time(sdk_server: int) -> None:
    outcomes = await refusals(f"127.0.0.1:{sdk_server}")

    assert refused_as_expected(outcomes, EXPECTED) == {}, outcomes


async def test_a_refused_stream_that_waits_for_a_reply_or_never_ends_is_refused_before_its_deadline(
    sidecar_a: SidecarProcess,
) -> None:
    """The far sidecar reads a refused stream only so far: a client that writes one message and waits for a reply
    gets the refusal, and one that writes without end is not read until its deadline."""
    message = echo_request(1_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar_a.outbound_port}") as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        waiting = stub.BidiStream(timeout=WAIT_S)
        await waiting.write(message)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await waiting.read()  # no half-close: it waits for a reply before it writes again
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

        async def without_end() -> AsyncIterator[echo_pb2.EchoRequest]:
            while True:
                yield echo_request(100_000)

        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _ in stub.BidiStream(without_end(), timeout=WAIT_S):
                pass
        # Refused while the client still writes: grpc may report its own INTERNAL then, but never a deadline.
        assert ended.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL)


async def test_a_rate_limit_refusal_names_the_instance_that_refused_as_consul_knows_it(
    sidecar_a: SidecarProcess, sdk_server: int, agent: Agent
) -> None:
    """A caller takes a refusal as proof that its call was never executed only from the instance it sent it to:
    the sidecar's and the SDK server's refusals name their Consul service ID."""
    for target, service in ((f"127.0.0.1:{sidecar_a.outbound_port}", "b-svc"), (f"127.0.0.1:{sdk_server}", "sdk-svc")):
        async with grpc.aio.insecure_channel(target) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for _ in range(2):  # the first may spend the one call every 1,000 s
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.EchoOnce(echo_request(0), timeout=WAIT_S)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.EchoOnce(echo_request(0), timeout=WAIT_S)
        info = error_info(refused.value)
        assert info is not None
        assert info.reason == ErrorReason.RATE_LIMITED
        [registered] = agent.passing(service)
        assert info.metadata["instance"] == registered["Service"]["ID"]
