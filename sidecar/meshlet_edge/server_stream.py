"""A server-streaming method over plain HTTP: each reply one NDJSON line or one server-sent event, as ``Accept``
chose (meshlet_edge.framing).

The headers wait for the first reply: a call that fails before it (a refusal by the mesh, a NOT_FOUND by the
upstream) is answered as a unary call's failure is, with its mapped HTTP status and the one error shape. After
it, the status is 200 and a failure is the stream's last line or event. A client that goes away cancels the
upstream call (the edge's handlers are cancelled when their connection is lost), and so does a stream the client
can no longer be written to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web
from google.rpc import status_pb2

from meshlet_edge import framing
from meshlet_edge.open_streams import CANCELLED, call_cancelled
from meshlet_edge.routes import Route
from meshlet_edge.status import http_status, refusal, status_json, status_of
from meshlet_edge.transcode import response_json

log = logging.getLogger("meshlet.edge")

ErrorAnswer = Callable[..., web.StreamResponse]  # edge._error: (status, http, headers=None, pool=None)
Explain = Callable[[status_pb2.Status], status_pb2.Status]


def _as_is(status: status_pb2.Status) -> status_pb2.Status:
    return status


def not_acceptable(request: web.Request, error: ErrorAnswer) -> web.StreamResponse:
    what = (
        f"{request.path} answers with a stream: accept {framing.NDJSON} (or application/json) "
        f"or {framing.SSE}, not {request.headers.get('Accept', '')!r}"
    )
    return error(refusal(grpc.StatusCode.INVALID_ARGUMENT, what, [("Accept", what)]), 406)


async def serve(
    request: web.Request, route: Route, call: Any, media: str, error: ErrorAnswer, explain: Explain = _as_is
) -> web.StreamResponse:
    """Relay `call` (a started unary-stream call) to the client as `media`; `error` answers a failure that
    comes before the first reply, `explain` may restate the status a call ended with (the edge's shutdown)."""
    sse = media == framing.SSE
    response = web.StreamResponse(headers={"Content-Type": media, "Cache-Control": "no-store"})
    if sse:
        response.headers["X-Accel-Buffering"] = "no"  # a buffering reverse proxy would hold the events back
    try:
        try:
            first = await call.read()
        except asyncio.CancelledError as cancelled:
            if not call_cancelled(cancelled):
                raise
            status = explain(CANCELLED)  # the edge's shutdown, before the first reply
            return error(status, 499 if status is CANCELLED else 503)
        except grpc.aio.AioRpcError as failure:
            pool = route.request_type.DESCRIPTOR.file.pool
            status = explain(status_of(failure))
            code = failure.code() if status.code == failure.code().value[0] else grpc.StatusCode.UNAVAILABLE
            return error(status, http_status(code), None, pool=pool)
        await response.prepare(request)
        status = await _relay(response, route, call, first, sse)
        if status is not None:
            status = explain(status)
            text = status_json(status, route.request_type.DESCRIPTOR.file.pool)  # the upstream's own detail types too
            await response.write(framing.sse_error(text) if sse else framing.ndjson_error(text))
        elif sse:
            await response.write(framing.SSE_END)
        await response.write_eof()
        return response
    except ConnectionResetError:  # the client left while being written to; the response is over, quietly
        log.debug("%s: the client left, its stream is cancelled", route.path)
        return response
    except asyncio.CancelledError:  # the client left while the stream waited for the upstream
        log.debug("%s: the client left, its stream is cancelled", route.path)
        raise
    finally:
        call.cancel()  # a no-op for a call that ended; else the client left or the edge failed: upstream hears it


async def _relay(
    response: web.StreamResponse, route: Route, call: Any, reply: Any, sse: bool
) -> status_pb2.Status | None:
    """Write every reply from `reply` on; the status of a failure, None at a clean end."""
    try:
        while reply is not grpc.aio.EOF:
            text = response_json(route, reply)
            await response.write(framing.sse_message(text) if sse else framing.ndjson_result(text))
            reply = await call.read()
    except grpc.aio.AioRpcError as failure:
        return status_of(failure)
    except asyncio.CancelledError as cancelled:
        if call_cancelled(cancelled):  # the edge's shutdown ended the call: the client hears it
            return CANCELLED
        raise
    except ConnectionResetError:
        raise
    except Exception:  # the headers are out: a bug of ours ends the stream in the one error shape
        log.exception("streaming %s failed inside the edge", route.path)
        return refusal(grpc.StatusCode.INTERNAL, f"the edge failed to stream {route.path}; its log says why")
    return None
