"""meshlet's channels ping every KEEPALIVE_TIME_MS to find dead connections fast; meshlet's servers must accept
those pings. A watch that stays quiet for longer than a few pings keeps its connection: a server that counted
the pings as abuse would answer GOAWAY too_many_pings and end the watch with UNAVAILABLE."""

from __future__ import annotations

import grpc
import pytest

from meshlet.transport.channels import KEEPALIVE_TIME_MS
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.conftest import EchoFleet, MeshFactory

pytestmark = pytest.mark.slow

QUIET_S = 6 * KEEPALIVE_TIME_MS / 1000  # past grpc's two strikes, with room to spare


async def test_a_quiet_watch_outlives_many_keepalive_pings(fleet: EchoFleet, mesh_factory: MeshFactory) -> None:
    fleet.start("echo-1")
    stub = echo_pb2_grpc.EchoStub(mesh_factory().channel(fleet.service))
    every_ms = str(int(QUIET_S * 1000))
    watch = stub.ServerStream(echo_pb2.EchoRequest(message="w"), metadata=(("x-echo-stream-every-ms", every_ms),))
    assert (await watch.read()).message == "w-0"
    second = await watch.read()  # only after QUIET_S of silence on the connection, but for the pings
    assert second is not grpc.aio.EOF, f"the watch ended: {await watch.code()} {await watch.details()}"
    assert second.message == "w-1"
    watch.cancel()
