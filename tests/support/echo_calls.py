"""The echo service's calls of every RPC kind, for tests that check a behaviour holds for all four, and what a
caller must see when such a call crosses sidecars to the plain app (tests.support.plain_app) and back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.support.plain_app import ERROR_DOMAIN, ERROR_REASON, PlainEchoApp

WAIT_S = 10.0  # how long to wait for something that must happen: a bound on failure, never a timing assertion
ECHO_METADATA = (("x-echo-metadata", "1"), ("x-tenant", "acme"), ("x-blob-bin", b"\x00\xffbytes"))

Invoke = Callable[[echo_pb2_grpc.EchoStub, Any], Awaitable[Any]]

WATCH = (("x-echo-stream-every-ms", "20"),)
"""Metadata that makes the echo server's ServerStream a watch: a message every 20 ms until the caller leaves."""


async def watch_until(watch: Any, done: Callable[[], bool | Awaitable[bool]], what: str) -> int:
    """Read a watch (a ServerStream called with WATCH) until `done()`; every read must bring a message, so the
    watch is alive throughout. Returns how many messages were read; gives up after WAIT_S worth of them."""
    for count in range(1, int(WAIT_S / 0.02) + 1):
        reply = await watch.read()
        assert reply is not grpc.aio.EOF, f"the watch ended while waiting for {what}"
        result = done()
        if await result if isinstance(result, Awaitable) else result:
            return count
    raise AssertionError(f"the watch streamed on, but {what} never happened")


async def watch_for(watch: Any, seconds: float) -> int:
    """Keep reading a watch for `seconds` of the loop's time; every read must bring a message."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    return await watch_until(watch, lambda: loop.time() >= until, f"{seconds} s of messages")


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

# ------------------------------------------------------------------------------------------ what a caller sees


async def _assert_metadata_echoed(call: Any) -> None:
    """The app sent ECHO_METADATA's headers back as initial-<key> and trailing-<key>: text and bytes arrive intact."""
    for where, metadata in (("initial", await call.initial_metadata()), ("trailing", await call.trailing_metadata())):
        received = dict(metadata)
        got = (received.get(f"{where}-x-tenant"), received.get(f"{where}-x-blob-bin"))
        assert got == ("acme", b"\x00\xffbytes"), f"{where} metadata echoed by the app (all of it: {received!r})"


async def assert_unary_relayed(stub: echo_pb2_grpc.EchoStub, app: PlainEchoApp) -> None:
    """A unary call reaches `app` with the caller's metadata; the app's reply and metadata come back."""
    call = stub.Echo(request("hello"), metadata=ECHO_METADATA, timeout=WAIT_S)
    reply = await call
    assert (reply.message, reply.served_by) == ("hello", "plain"), "reply (message, served_by)"
    await _assert_metadata_echoed(call)
    assert app.seen[-1].metadata.get("x-tenant") == "acme", "x-tenant as the app received it"


async def assert_server_stream_relayed(stub: echo_pb2_grpc.EchoStub) -> None:
    """Every message of a server stream comes back, then OK and the app's metadata."""
    call = stub.ServerStream(request("tick"), metadata=ECHO_METADATA, timeout=WAIT_S)
    assert [reply.message async for reply in call] == ["tick-0", "tick-1", "tick-2"], "streamed replies"
    assert await call.code() == grpc.StatusCode.OK, "status"
    await _assert_metadata_echoed(call)


async def assert_client_stream_relayed(stub: echo_pb2_grpc.EchoStub) -> None:
    """Every request of a client stream reaches the app, whose one reply joins them."""
    call = stub.ClientStream(requests("a", "b", "c"), metadata=ECHO_METADATA, timeout=WAIT_S)
    assert (await call).message == "a+b+c", "reply to the three requests"
    await _assert_metadata_echoed(call)


async def assert_bidi_stream_relayed(stub: echo_pb2_grpc.EchoStub) -> None:
    """Each request of a bidi stream is answered before the caller sends the next: nothing holds the stream back."""
    call = stub.BidiStream(metadata=ECHO_METADATA, timeout=WAIT_S)
    for message in ("ping", "pong", "done"):
        await call.write(request(message))
        assert (await call.read()).message == message, "reply read before the caller has finished sending"
    await call.done_writing()
    last = await call.read()
    assert last is grpc.aio.EOF, "the stream ends once the caller is done"
    assert await call.code() == grpc.StatusCode.OK, "status"
    await _assert_metadata_echoed(call)


async def assert_app_error_relayed(invoke: Invoke, stub: echo_pb2_grpc.EchoStub) -> None:
    """The app's failure reaches the caller whole: code, message, trailers and its ErrorInfo in the status details."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await invoke(stub, (("x-echo-fail", "FAILED_PRECONDITION"),))
    error = failed.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, "status code"
    assert "failed as asked (FAILED_PRECONDITION)" in (error.details() or ""), "the app's message"
    assert dict(error.trailing_metadata()).get("x-app-trailer") == "failed", "the app's trailer"
    status = rpc_status.from_call(error)  # raises unless code and message agree with grpc-status-details-bin
    assert status is not None, "grpc-status-details-bin in the trailers"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info), "the first status detail is an ErrorInfo"
    got = (info.reason, info.domain, dict(info.metadata))
    assert got == (ERROR_REASON, ERROR_DOMAIN, {"by": "plain-app"}), "ErrorInfo (reason, domain, metadata)"
