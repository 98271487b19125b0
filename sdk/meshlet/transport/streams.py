"""Streaming replies through the pipeline.

The send stage opens the grpc call and waits for the first response message (or the end of the stream):
until then the call may be retried; after it the call is committed and the stream is handed back up the
pipeline as a :class:`ResponseStream`, whose completion runs the stages' completion work when the caller has
read it to the end, it failed, or the caller cancelled it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

import grpc

from meshlet.errors import ChannelClosed
from meshlet.pipeline import ReplyStream
from meshlet.resilience.replay import ReplayBuffer

log = logging.getLogger("meshlet.transport")

EOF = grpc.aio.EOF

# Trap: when a server ends a call while requests are still being written to it (an intention denial, an early
# error), the write fails and grpc.aio sets the call's status to this INTERNAL placeholder, over the server's
# own status if that was already in (measured: 2-5 % of early-ending client streams). So request writing stops
# the moment the call ends (`pump_requests`), and a placeholder that got in first is replaced by the server's
# own status once it has settled (`settled`).
CORE_WRITE_RACE = "Internal error from Core"
SETTLE_POLL_S = 0.005
SETTLE_POLLS = 200


class ReplayableRequests:
    """The caller's request stream, readable again by each attempt until its replay buffer overflows.

    Trap: an attempt's writer is cancelled when its call ends, often while it waits for the caller's next
    message. Cancelling that wait would end the caller's own async generator for good, and the retry would then
    send a cut-short stream as complete. So the source is read through one pending read at a time, shielded: a
    cancelled attempt leaves it in place and the next attempt awaits the same read.
    """

    __slots__ = ("_buffer", "_exhausted", "_pending", "_source")

    def __init__(self, source: AsyncIterable[Any] | Iterable[Any], limit_bytes: int) -> None:
        self._source: AsyncIterator[Any] = aiter(source) if isinstance(source, AsyncIterable) else _to_async(source)
        self._buffer = ReplayBuffer(limit_bytes)
        self._pending: asyncio.Future[Any] | None = None
        self._exhausted = False

    def can_replay(self) -> bool:
        return self._buffer.can_replay()

    async def replay(self) -> AsyncIterator[Any]:
        """One attempt's request stream: what earlier attempts sent, then the rest of the source."""
        for message in self._buffer.messages():
            yield message
        while not self._exhausted:
            read, message = await self._read()
            if not read:
                return
            self._buffer.keep(message)
            yield message

    async def rest(self) -> AsyncIterator[Any]:
        """What the caller has not sent to any attempt yet, read on from the source and kept nowhere: what a server
        reads and drops before it answers, so that a caller still writing reads the answer (transport/raw.py)."""
        while not self._exhausted:
            read, message = await self._read()
            if not read:
                return
            yield message

    async def _read(self) -> tuple[bool, Any]:
        """(True, the source's next message), or (False, None) at its end; through one shielded pending read."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._source))
        try:
            message = await asyncio.shield(self._pending)
        except StopAsyncIteration:
            self._exhausted = True
            self._pending = None
            return False, None
        except asyncio.CancelledError:
            raise  # the read stays pending, or done with its result, for the next attempt to take
        except Exception:
            self._pending = None
            raise
        self._pending = None
        return True, message

    def __repr__(self) -> str:
        return f"<ReplayableRequests {self._buffer!r}{', source exhausted' if self._exhausted else ''}>"


async def _to_async(source: Iterable[Any]) -> AsyncIterator[Any]:
    for item in source:
        yield item


async def pump_requests(requests: AsyncIterator[Any], grpc_call: Any, owner: asyncio.Task[Any] | None) -> None:
    """Copy a request stream onto a client call with write(), then half-close it; stop once the call has ended.

    Trap: grpc.aio ends a server's request stream the same way whether the caller half-closed or went away; the
    cancellation reaches the `owner` task separately, usually one loop turn later. Half-closing at once would
    show the next hop a truncated stream as complete, so the copy first lets a pending cancellation land.
    """
    try:
        async for message in requests:
            await grpc_call.write(message)
        await asyncio.sleep(0)
        if owner is None or not owner.cancelling():
            await grpc_call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        return  # the call ended first: its status reaches the caller through the reply side
    except Exception as error:  # the caller's stream broke: the next hop must not see it as complete
        log.debug("request stream ended abnormally: %r", error)
        grpc_call.cancel()


def start_pumping(requests: AsyncIterator[Any], grpc_call: Any) -> None:
    """Write `requests` onto `grpc_call` in the background, and stop writing as soon as the call ends."""
    sending = asyncio.ensure_future(pump_requests(requests, grpc_call, asyncio.current_task()))
    grpc_call.add_done_callback(lambda _call: sending.cancel())


async def wait_settled(grpc_call: Any) -> None:
    """Wait (at most a second) until the peer's own status has replaced grpc's write-race placeholder."""
    for _ in range(SETTLE_POLLS):
        if await grpc_call.details() != CORE_WRITE_RACE:
            return
        await asyncio.sleep(SETTLE_POLL_S)


async def settled(grpc_call: Any, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """The call's real failure, with the write-race placeholder replaced by the peer's own status."""
    if error.details() != CORE_WRITE_RACE:
        return error
    await wait_settled(grpc_call)
    return grpc.aio.AioRpcError(
        await grpc_call.code(),
        await grpc_call.initial_metadata(),
        await grpc_call.trailing_metadata(),
        await grpc_call.details(),
        None,
    )


def closed_under_the_caller(grpc_call: Any) -> bool:
    """Whether a CancelledError out of `grpc_call` means the mesh closed its channel (mesh shutdown, or a drain
    limit passed) rather than the caller's own task being cancelled: the caller then gets a status, not that."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0 and bool(grpc_call.cancelled())


def channel_closed() -> ChannelClosed:
    return ChannelClosed(
        "the mesh closed the connection this call was running on (the mesh or its upstream is shutting down, "
        "or the call outlived its channel's drain limit): make the call again on a running mesh"
    )


class ResponseStream(ReplyStream):
    """A committed response stream: the first message already read, the rest read on demand."""

    __slots__ = ("_call", "_cancelled", "_ending", "_first")

    def __init__(self, call: Any, first: Any) -> None:
        super().__init__()
        self._call = call
        self._first = first
        self._cancelled = False  # by its reader, with cancel(): reads after that raise CancelledError as grpc's do
        self._ending: asyncio.Task[None] | None = None
        if first is EOF:
            self._finish_from_call()
        else:  # a reader that stops early must not hold the stages' slots (bulkhead, load, probe) for good
            call.add_done_callback(self._call_ended)

    def _call_ended(self, _call: Any) -> None:
        if not self._done:
            self._ending = asyncio.ensure_future(self._finish_with_status())

    async def _finish_with_status(self) -> None:
        code = await self._call.code()
        if code is grpc.StatusCode.OK:
            self.finish(None)
        else:
            error = grpc.aio.AioRpcError(code, None, await self._call.trailing_metadata(), await self._call.details())
            self.finish(await settled(self._call, error))

    async def read(self) -> Any:
        """The next message, or grpc.aio.EOF at the end (grpc.aio's read())."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as error:
            error = await settled(self._call, error)
            self.finish(error)
            raise error from None
        except BaseException as error:
            if self._closed_under_the_reader(error):
                closed = channel_closed()
                self.finish(closed)
                raise closed from None
            self._call.cancel()  # the reader was cancelled: so is the call it was reading
            self.finish(error)
            raise
        if message is EOF:
            self._finish_from_call()
        return message

    def _closed_under_the_reader(self, error: BaseException) -> bool:
        """A CancelledError that neither the reader's task nor its cancel() asked for: the mesh closed the call."""
        return isinstance(error, asyncio.CancelledError) and not self._cancelled and closed_under_the_caller(self._call)

    def _finish_from_call(self) -> None:
        self.finish(None)

    async def messages(self) -> AsyncIterator[Any]:
        """Every message; a reader that leaves early (break, or its own generator closed) cancels the call."""
        try:
            while (message := await self.read()) is not EOF:
                yield message
        finally:
            if not self._done:
                self.cancel()

    def cancel(self) -> bool:
        self._cancelled = True
        cancelled = bool(self._call.cancel())
        self.finish(grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, None, None, "cancelled by the caller"))
        return cancelled

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._call.code()
        return code

    async def details(self) -> str:
        details: str = await self._call.details()
        return details
