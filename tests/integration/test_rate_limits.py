"""Inbound rate limits end to end: an echo server process limiting each caller identity to 2 calls a second
(burst 2), a raw grpc.aio client with its own mTLS certificate that gets RESOURCE_EXHAUSTED with
``grpc-retry-pushback-ms``, and a meshlet client that makes the same burst and loses no call because it waits
out each pushback. Each caller has its own certificate, so each starts with a full bucket of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from meshlet.config import load_config
from meshlet.errors import PUSHBACK_KEY, ErrorReason, error_info
from meshlet.events import Event, RetryNotAttempted, RetryScheduled
from meshlet.mesh import Mesh
from meshlet.security.identity import SpiffeId
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.conftest import EchoFleet
from tests.integration.test_security import TRUST_DOMAIN, DevPki, direct_channel, handled
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Processes, processes

pytestmark = pytest.mark.slow

HELLO = echo_pb2.EchoRequest(message="hello")
BURST = 6  # calls made back to back by each client, three times the limit's burst


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
    for caller in ("impatient", "observer"):
        pki.issue(caller)
    return pki


@pytest.fixture(scope="module")
def limited(module_procs: Processes, module_agent: Agent, pki: DevPki) -> EchoFleet:
    """An echo server that lets each caller make 2 calls a second, in bursts of at most 2."""
    fleet = EchoFleet(module_procs, module_agent, service=f"search-{uuid.uuid4().hex[:6]}")
    pki.issue(fleet.service)
    limits = {"MESHLET_RATE_LIMIT__PER_CALLER__RATE_PER_S": "2", "MESHLET_RATE_LIMIT__PER_CALLER__BURST": "2"}
    fleet.start("limited", env={**pki.tls_env(fleet.service), **limits})
    return fleet


async def test_a_caller_over_its_limit_gets_resource_exhausted_with_a_pushback(limited: EchoFleet, pki: DevPki) -> None:
    port = limited.ports["limited"]
    before = await handled(port, pki, limited.service, "EchoOnce", caller="observer")
    refused: list[grpc.aio.AioRpcError] = []
    async with direct_channel(port, pki.credentials("impatient"), limited.service) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(BURST):
            try:
                await stub.EchoOnce(HELLO, timeout=5)
            except grpc.aio.AioRpcError as error:
                refused.append(error)

    served = BURST - len(refused)
    assert served >= 2, "the burst of 2 is served"
    assert refused, "calls past the burst, made at once, are over 2 a second"
    caller = SpiffeId.for_service("impatient", trust_domain=TRUST_DOMAIN).uri
    for refusal in refused:
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(refusal.trailing_metadata() or ())[PUSHBACK_KEY]) > 0
        assert caller in (refusal.details() or "")
        info = error_info(refusal)
        assert info is not None
        assert info.reason == ErrorReason.RATE_LIMITED
        assert info.metadata["caller"] == caller
    assert await handled(port, pki, limited.service, "EchoOnce", caller="observer") == before + served


@pytest.mark.parametrize(
    "retry_on",
    [
        pytest.param(
            None,
            id="default retry codes",
        ),
        pytest.param(["UNAVAILABLE", "RESOURCE_EXHAUSTED"], id="RESOURCE_EXHAUSTED in retry.on"),
    ],
)
async def test_a_meshlet_client_waits_out_the_pushback_and_loses_no_call(
    retry_on: list[str] | None, limited: EchoFleet, module_agent: Agent, pki: DevPki
) -> None:
    """EchoOnce declares no idempotency; it is re-sent anyway, because a refused call never reached the handler."""
    port = limited.ports["limited"]
    client, observer = (f"{role}-{uuid.uuid4().hex[:6]}" for role in ("patient", "observer"))
    pki.issue(client)
    pki.issue(observer)
    before = await handled(port, pki, limited.service, "EchoOnce", caller=observer)
    overrides: dict[str, Any] = {"tls": pki.tls_config(client)}
    if retry_on is not None:
        overrides["upstream_defaults"] = {"retry": {"on": retry_on}}
    events: list[Event] = []
    async with Mesh(load_config(None, env={"CONSUL_HTTP_ADDR": module_agent.url}, overrides=overrides)) as mesh:
        mesh.events.subscribe(events.append)
        stub = echo_pb2_grpc.EchoStub(mesh.channel(limited.service))

        replies = [await stub.EchoOnce(HELLO, timeout=5) for _ in range(BURST)]

    assert [reply.served_by for reply in replies] == ["limited"] * BURST
    retries = [event for event in events if isinstance(event, RetryScheduled)]
    assert retries, "the burst went over the limit"
    # Each refused call succeeded on its second attempt: the client slept the server's pushback, not a short
    # backoff after which the bucket would still have been empty.
    assert {(retry.code, retry.attempt) for retry in retries} == {("RESOURCE_EXHAUSTED", 1)}
    assert [event for event in events if isinstance(event, RetryNotAttempted)] == []
    # The server saw BURST + len(retries) attempts, and its handler ran exactly once per call.
    assert await handled(port, pki, limited.service, "EchoOnce", caller=observer) == before + BURST
