"""Streaming replies through the pipeline.

The send stage opens the grpc call and waits for the first response message (or the end of the stream):
until then the call may be retried; after it the call is committed and the stream is handed back up the
pipeline as a :class:`ResponseStream`, whose completion runs the stages' completion work when the caller has
read it to the end, it failed, or the caller cancelled it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from meshlet.pipeline import ReplyStream

EOF = grpc.aio.EOF


class ResponseStream(ReplyStream):
    """A committed response stream: the first message already read, the rest read on demand."""

    __slots__ = ("_call", "_first")

    def __init__(self, call: Any, first: Any) -> None:
        super().__init__()
        self._call = call
        self._first = first
        if first is EOF:
            self._finish_from_call()

    async def read(self) -> Any:
        """The next message, or grpc.aio.EOF at the end (grpc.aio's read())."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as error:
            self.finish(error)
            raise
        except BaseException as error:  # the reader was cancelled: so is the call it was reading
            self._call.cancel()
            self.finish(error)
            raise
        if message is EOF:
            self._finish_from_call()
        return message

    def _finish_from_call(self) -> None:
        self.finish(None)

    async def messages(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not EOF:
            yield message

    def cancel(self) -> bool:
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
