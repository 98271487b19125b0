"""The echo service's calls of every RPC kind, for tests that check a behaviour holds for all four."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc

WAIT_S = 10.0  # how long to wait for something that must happen: a bound on failure, never a timing assertion
ECHO_METADATA = (("x-echo-metadata", "1"), ("x-tenant", "acme"), ("x-blob-bin", b"\x00\xffbytes"))

Invoke = Callable[[echo_pb2_grpc.EchoStub, Any], Awaitable[Any]]


def request(message: str) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(message=message)


async def requests(*messages: str) -> AsyncIterator[echo_pb2.EchoRequest]:
    for message in messages:
        yield request(message)


async def unary(stub: echo_pb2_grpc.EchoStub, metadata: Any) -> Any:
    return await stub.Echo(request("x"), metadata=metadata, timeout=WAIT_S)


async def server_stream(stub: echo_pb2_grpc.EchoStub, metadata: Any) -> Any:
    return [reply async for reply in stub.ServerStream(request("x"), metadata=metadata, timeout=WAIT_S)]


async def client_stream(stub: echo_pb2_grpc.EchoStub, metadata: Any) -> Any:
    return await stub.ClientStream(requests("x", "y"), metadata=metadata, timeout=WAIT_S)


async def bidi_stream(stub: echo_pb2_grpc.EchoStub, metadata: Any) -> Any:
    return [reply async for reply in stub.BidiStream(requests("x", "y"), metadata=metadata, timeout=WAIT_S)]


EVERY_KIND: dict[str, Invoke] = {
    "unary": unary,
    "server": server_stream,
    "client": client_stream,
    "bidi": bidi_stream,
}
