"""A handler served by ``mesh.server()`` whose own outbound call failed, and that lets the failure escape: the
server answers UPSTREAM_FAILED, whatever the RPC kind, never the downstream's status. In process, over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from meshlet.config import load_config
from meshlet.errors import BudgetExhausted, ErrorReason, MeshError, NoHealthyEndpoint, error_info
from meshlet.mesh import Mesh
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc

HELLO = echo_pb2.EchoRequest(message="hello")
REFUSAL = NoHealthyEndpoint("no healthy instance of ledger", metadata={"upstream": "ledger", "attempts": "1"})


class CallsLedger(echo_pb2_grpc.EchoServicer):
    """Every method fails as a handler whose call to ledger was refused by the mesh would."""

    def __init__(self, refusal: MeshError) -> None:
        self.refusal = refusal

    async def Echo(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoReply:  # noqa: N802
        raise self.refusal

    async def ServerStream(self, request: echo_pb2.EchoRequest, context: Any) -> AsyncIterator[echo_pb2.EchoReply]:  # noqa: N802
        yield echo_pb2.EchoReply(message="before the call to ledger")
        raise self.refusal

    async def ClientStream(self, request_iterator: Any, context: Any) -> echo_pb2.EchoReply:  # noqa: N802
        async for _ in request_iterator:
            pass
        raise self.refusal


async def call(stub: echo_pb2_grpc.EchoStub, kind: str) -> None:
    if kind == "unary":
        await stub.Echo(HELLO, timeout=5)
    elif kind == "server_stream":
        async for _ in stub.ServerStream(HELLO, timeout=5):
            pass
    else:
        await stub.ClientStream(iter([HELLO, HELLO]), timeout=5)


async def answer_of(refusal: MeshError, kind: str) -> grpc.aio.AioRpcError:
    mesh = Mesh(load_config(None, env={}, overrides={"service.name": "mid", "tls.source": "off"}))
    server = mesh.server()
    echo_pb2_grpc.add_EchoServicer_to_server(CallsLedger(refusal), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call(stub, kind)
        return failed.value
    finally:
        await server.stop(None)
        await mesh.close()


@pytest.mark.parametrize("kind", ["unary", "server_stream", "client_stream"])
async def test_a_refusal_of_the_handlers_own_call_leaves_the_server_as_upstream_failed(kind: str) -> None:
    error = await answer_of(REFUSAL, kind)

    assert error.code() == grpc.StatusCode.ABORTED
    info = error_info(error)
    assert info is not None
    assert dict(info.metadata) == {
        "upstream": "ledger",
        "upstream_code": "UNAVAILABLE",
        "upstream_reason": ErrorReason.NO_HEALTHY_ENDPOINT,
    }
    assert "ledger" in (error.details() or "")


async def test_a_spent_budget_below_is_not_the_servers_unavailable() -> None:
    error = await answer_of(BudgetExhausted("ledger keeps failing", metadata={"upstream": "ledger"}), "unary")

    assert error.code() == grpc.StatusCode.ABORTED
    info = error_info(error)
    assert info is not None
    assert (info.reason, info.metadata["upstream_reason"]) == (ErrorReason.UPSTREAM_FAILED, "BUDGET_EXHAUSTED")
