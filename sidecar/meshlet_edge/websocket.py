"""A client- or bidirectional-streaming method as a WebSocket on its route (a GET with ``Upgrade: websocket``).

Each text frame from the client is one request message as JSON (the path's variables set on each); the frame
``{"@end": true}`` ends the request stream and leaves the socket open for the replies, as gRPC's half-close does
(a close frame cannot: a WebSocket side that sent one may receive no more data). Each reply is one text frame
``{"result": ...}``. The end: close code 1000 when the call ended OK; otherwise the last text frame is
``{"error": <google.rpc.Status>}`` and the close code is 4000 + the gRPC code, its name the reason
(meshlet_edge.framing). A client that closes first, or goes away, cancels the call.

Frames the client sends reach the upstream through a bounded queue, so a client that sends faster than the
upstream reads is held back by TCP rather than buffered in the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from aiohttp import WSMsgType, web
from google.rpc import status_pb2

from meshlet_edge import framing
from meshlet_edge.open_streams import CANCELLED, call_cancelled
from meshlet_edge.routes import Route
from meshlet_edge.status import refusal, status_json, status_of
from meshlet_edge.transcode import BadRequest, request_message, response_json

log = logging.getLogger("meshlet.edge")

QUEUED_REQUESTS = 16
HEARTBEAT_S = 30.0  # a ping this often finds a client that vanished without closing (and keeps proxies awake)
OK = status_pb2.Status(code=grpc.StatusCode.OK.value[0])
ErrorAnswer = Callable[[status_pb2.Status, int, dict[str, str]], web.StreamResponse]
_END = object()


class _ClientLeft(Exception):
    """The client closed the socket, or it broke: nobody is left to answer."""


class _BadFrame(Exception):
    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


def upgrade_required(request: web.Request, route: Route, error: ErrorAnswer) -> web.StreamResponse:
    what = (
        f"{route.path} streams requests: open a WebSocket on {request.path} (GET with Upgrade: websocket), "
        'send each request as a JSON text frame and {"@end": true} after the last'
    )
    headers = {"Upgrade": "websocket", "Connection": "Upgrade"}
    return error(refusal(grpc.StatusCode.FAILED_PRECONDITION, what), 426, headers)


async def serve(
    request: web.Request,
    route: Route,
    variables: Mapping[str, str],
    start: Callable[[AsyncIterator[Any]], Any],
    max_frame_bytes: int,
    explain: Callable[[status_pb2.Status], status_pb2.Status] = lambda status: status,
) -> web.StreamResponse:
    """Run one call over the upgraded `request`: `start(requests)` starts it on the mesh (stream-unary or
    stream-stream) with the request iterator the socket's frames feed."""
    socket = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=max_frame_bytes)
    await socket.prepare(request)
    queue: asyncio.Queue[Any] = asyncio.Queue(QUEUED_REQUESTS)
    requests = _Requests(queue)
    call = start(requests.messages())
    reading = asyncio.create_task(_read_frames(socket, route, variables, queue))
    replying = asyncio.create_task(_relay_replies(socket, route, call))
    try:
        status = explain(await _outcome(reading, replying))
    except _ClientLeft:
        log.debug("%s: the client left, its call is cancelled", route.path)
        return socket
    except Exception:  # the socket is open: a bug of ours ends the call in the one error shape
        log.exception("%s over a WebSocket failed inside the edge", route.path)
        status = refusal(grpc.StatusCode.INTERNAL, f"the edge failed to relay {route.path}; its log says why")
    finally:
        for task in (reading, replying):
            task.cancel()
        call.cancel()  # a no-op for a call that ended
        requests.stop()
        await asyncio.gather(reading, replying, return_exceptions=True)  # both over before the socket closes
    code = grpc.StatusCode.OK if status.code == 0 else _code(status.code)
    with contextlib.suppress(ConnectionResetError):
        if code is not grpc.StatusCode.OK:
            await socket.send_str(framing.ws_error(status_json(status, route.request_type.DESCRIPTOR.file.pool)))
        close_code, reason = framing.ws_close(code)
        await socket.close(code=close_code, message=reason)
    return socket


async def _outcome(reading: asyncio.Task[None], replying: asyncio.Task[status_pb2.Status]) -> status_pb2.Status:
    """The call's final status, or an edge refusal of a bad frame; raises _ClientLeft."""
    done, _ = await asyncio.wait({reading, replying}, return_when=asyncio.FIRST_COMPLETED)
    if reading in done:
        failure = reading.exception()
        if isinstance(failure, _BadFrame):
            return failure.status
        if failure is not None:
            raise failure
        # the request stream ended with {"@end": true}: the replies go on until the call ends
    return await replying


class _Requests:
    """The call's request stream, fed by the socket's frames through `queue`.

    Trap: the mesh reads it through a task of its own (one pending read, kept across retries:
    meshlet.transport.streams.ReplayableRequests), which a cancelled call leaves waiting on the queue; garbage
    collected pending, asyncio logs "Task was destroyed but it is pending!" at error level, once per client that
    went away. `stop` cancels whichever task waits for the next frame, so it ends with the call."""

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self._queue = queue
        self._reader: asyncio.Task[Any] | None = None

    async def messages(self) -> AsyncIterator[Any]:
        while True:
            self._reader = asyncio.current_task()
            message = await self._queue.get()
            self._reader = None
            if message is _END:
                return
            yield message

    def stop(self) -> None:
        if self._reader is not None and self._reader is not asyncio.current_task() and not self._reader.done():
            self._reader.cancel()


async def _read_frames(
    socket: web.WebSocketResponse, route: Route, variables: Mapping[str, str], queue: asyncio.Queue[Any]
) -> None:
    """Queue each frame's message until ``{"@end": true}``; raises _BadFrame or _ClientLeft."""
    while True:
        frame = await socket.receive()
        if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            raise _ClientLeft()
        if frame.type is not WSMsgType.TEXT:
            what = "send each request message as a JSON text frame, not a binary one"
            raise _BadFrame(refusal(grpc.StatusCode.INVALID_ARGUMENT, what, [("frame", what)]))
        if _is_end(frame.data):
            await queue.put(_END)
            return
        try:
            message = request_message(route, variables, (), frame.data.encode())
        except BadRequest as bad:
            raise _BadFrame(
                refusal(grpc.StatusCode.INVALID_ARGUMENT, bad.description, [(bad.field, bad.description)])
            ) from None
        await queue.put(message)


def _is_end(text: str) -> bool:
    if framing.END_MARK not in text:
        return False
    try:
        parsed = json.loads(text)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get(framing.END_MARK) is True


async def _relay_replies(socket: web.WebSocketResponse, route: Route, call: Any) -> status_pb2.Status:
    """Send each reply as a text frame; the call's final status. Raises _ClientLeft when sending fails."""
    try:
        if route.server_streaming:
            while (reply := await call.read()) is not grpc.aio.EOF:
                await socket.send_str(framing.ws_result(response_json(route, reply)))
        else:
            await socket.send_str(framing.ws_result(response_json(route, await call)))
    except grpc.aio.AioRpcError as failure:
        return status_of(failure)
    except asyncio.CancelledError as cancelled:
        if call_cancelled(cancelled):  # the edge's shutdown ended the call: the client hears it
            return CANCELLED
        raise
    except ConnectionResetError:
        raise _ClientLeft() from None
    return OK


def _code(number: int) -> grpc.StatusCode:
    return next((code for code in grpc.StatusCode if code.value[0] == number), grpc.StatusCode.UNKNOWN)
