"""MeshChannel: a grpc.aio.Channel whose calls run through an upstream's outbound pipeline.

Generated stubs take it as they take any channel. Each ``unary_unary(...)``-style method returns a multicallable
that builds one Call per invocation and hands it to the pipeline; without serializers, requests and replies
are bytes (what the sidecar uses). The returned call objects behave as grpc.aio's: awaitable or async-iterable,
with ``code()``, ``details()``, metadata accessors, ``cancel()``, and ``write()``/``done_writing()`` for
client streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import aclosing
from typing import Any

import grpc

from meshlet.call import Call, Cardinality, Deserializer, Method, Serializer
from meshlet.transport.streams import EOF, ReplayableRequests, ResponseStream

Handler = Callable[[Call], Awaitable[Any]]


class MeshChannel(grpc.aio.Channel):
    """A channel to a service by name, not by address: discovery, balancing and policies happen per call."""

    def __init__(
        self,
        upstream: str,
        handler: Handler,
        *,
        is_idempotent: Callable[[str], bool],
        replay_limit_bytes: int,
    ) -> None:
        self._upstream = upstream
        self._handler = handler
        self._is_idempotent = is_idempotent
        self._replay_limit = replay_limit_bytes
        self._methods: dict[tuple[str, Cardinality, Serializer, Deserializer], Method] = {}

    def _method(self, path: str, kind: Cardinality, serializer: Serializer, deserializer: Deserializer) -> Method:
        key = (path, kind, serializer, deserializer)
        found = self._methods.get(key)
        if found is None:
            found = self._methods[key] = Method(path, kind, self._is_idempotent(path), serializer, deserializer)
        return found

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> _UnaryUnary:
        return _UnaryUnary(
            self, self._method(method, Cardinality.UNARY_UNARY, request_serializer, response_deserializer)
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> _Streaming:
        kind = Cardinality.UNARY_STREAM
        return _Streaming(self, self._method(method, kind, request_serializer, response_deserializer))

    def stream_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> _Streaming:
        kind = Cardinality.STREAM_UNARY
        return _Streaming(self, self._method(method, kind, request_serializer, response_deserializer))

    def stream_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> _Streaming:
        kind = Cardinality.STREAM_STREAM
        return _Streaming(self, self._method(method, kind, request_serializer, response_deserializer))

    # The channel's own lifecycle belongs to the Mesh (endpoint channels are shared by every MeshChannel of
    # an upstream), so these are no-ops or answer for the upstream as a whole.
    async def close(self, grace: float | None = None) -> None:
        return None

    async def __aenter__(self) -> MeshChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await asyncio.Event().wait()

    async def channel_ready(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"<MeshChannel to {self._upstream}>"


class _UnaryUnary:
    __slots__ = ("_channel", "_method")

    def __init__(self, channel: MeshChannel, method: Method) -> None:
        self._channel = channel
        self._method = method

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> UnaryCall:
        channel = self._channel
        call = Call(channel._upstream, self._method, request, metadata, timeout, None, wait_for_ready)
        return UnaryCall(call, channel._handler(call))


class _CallOutcome:
    """Status and metadata of a finished call, as grpc.aio's call objects expose them: from meshlet's or the
    server's error when it failed, else from the last attempt's grpc call."""

    __slots__ = ()
    _call: Call

    async def _failure(self) -> grpc.aio.AioRpcError | None:
        raise NotImplementedError

    async def code(self) -> grpc.StatusCode:
        error = await self._failure()
        if error is not None:
            return error.code()
        transport = self._call.transport_call
        return grpc.StatusCode.OK if transport is None else await transport.code()

    async def details(self) -> str:
        error = await self._failure()
        if error is not None:
            return error.details() or ""
        transport = self._call.transport_call
        return "" if transport is None else await transport.details()

    async def initial_metadata(self) -> Any:
        error = await self._failure()
        if error is not None:
            return error.initial_metadata()
        transport = self._call.transport_call
        return grpc.aio.Metadata() if transport is None else await transport.initial_metadata()

    async def trailing_metadata(self) -> Any:
        error = await self._failure()
        if error is not None:
            return error.trailing_metadata()
        transport = self._call.transport_call
        return grpc.aio.Metadata() if transport is None else await transport.trailing_metadata()


class UnaryCall(_CallOutcome):
    """What a unary call returns: await it for the reply; its status and metadata are readable afterwards."""

    __slots__ = ("_call", "_coro", "_error")

    def __init__(self, call: Call, coro: Awaitable[Any]) -> None:
        self._call = call
        self._coro = coro
        self._error: grpc.aio.AioRpcError | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self._coro.__await__())
        except grpc.aio.AioRpcError as error:
            self._error = error
            raise

    async def _failure(self) -> grpc.aio.AioRpcError | None:
        return self._error


class _Streaming:
    __slots__ = ("_channel", "_method")

    def __init__(self, channel: MeshChannel, method: Method) -> None:
        self._channel = channel
        self._method = method

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> StreamingCall:
        channel = self._channel
        writes: _Writes | None = None
        if self._method.client_streaming:
            if request is None:
                writes = _Writes()
                request = writes.messages()
            request = ReplayableRequests(request, channel._replay_limit)
        call = Call(channel._upstream, self._method, request, metadata, timeout, None, wait_for_ready)
        return StreamingCall(call, channel._handler, writes)


class _Writes:
    """The request stream of a client-streaming call made with write()/done_writing() instead of an iterator."""

    _DONE = object()

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    async def messages(self) -> AsyncIterator[Any]:
        while (message := await self._queue.get()) is not self._DONE:
            yield message

    def put(self, message: Any) -> None:
        self._queue.put_nowait(message)

    def close(self) -> None:
        self._queue.put_nowait(self._DONE)


class StreamingCall(_CallOutcome):
    """A streaming call: started at once (as grpc.aio starts them); iterate or read() the replies of a response
    stream, await the reply of a client stream."""

    def __init__(self, call: Call, handler: Handler, writes: _Writes | None) -> None:
        self._call = call
        self._writes = writes
        self._task: asyncio.Future[Any] = asyncio.ensure_future(handler(call))

    # ---- response side
    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        stream = await self._task
        async with aclosing(stream.messages()) as messages:  # a caller that stops early cancels the call
            async for message in messages:
                yield message

    async def read(self) -> Any:
        stream = await self._task
        return await stream.read() if isinstance(stream, ResponseStream) else EOF

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()

    # ---- request side
    async def write(self, message: Any) -> None:
        if self._writes is None:
            raise grpc.aio.UsageError("write() needs a call made without a request iterator")
        self._writes.put(message)

    async def done_writing(self) -> None:
        if self._writes is not None:
            self._writes.close()

    # ---- status and metadata
    def cancel(self) -> bool:
        if not self._task.done():
            return self._task.cancel()
        if self._task.cancelled():
            return False
        result = self._task.result() if self._task.exception() is None else None
        return result.cancel() if isinstance(result, ResponseStream) else False

    def done(self) -> bool:
        return self._task.done()

    async def _failure(self) -> grpc.aio.AioRpcError | None:
        try:
            await self._task
        except grpc.aio.AioRpcError as error:
            return error
        return None
