"""The OpenAPI of the routes that stream, as meshlet_edge.server_stream and meshlet_edge.websocket answer them: a
server stream's 200 is NDJSON lines or server-sent events (an ``Accept`` refusing both a 406), not one JSON
message; a request stream is a WebSocket (101, else 426), whose messages travel in frames, not in a request body,
and whose failures after the upgrade are frames and close codes, not HTTP statuses. Pure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshlet_edge import framing

Schema = dict[str, Any]

NOT_ACCEPTABLE = (
    f"The Accept header refuses both {framing.NDJSON} (which application/json and */* accept) and {framing.SSE}."
)
UPGRADE_REQUIRED = "The method streams requests: open a WebSocket (GET with Upgrade: websocket)."
WEBSOCKET = (
    'A WebSocket: send each request message as a JSON text frame, then the frame {"@end": true}. Each reply is a '
    'text frame {"result": <reply>}. The call ends with close code 1000 when it is OK; otherwise the last frame is '
    '{"error": <google.rpc.Status>} and the close code is 4000 + the gRPC code, its name the reason.'
)


def server_stream_ok(reply: Schema, status: Schema) -> dict[str, Any]:
    """The 200 of a server stream: one NDJSON line per reply, or one event per reply."""
    line = {
        "type": "object",
        "description": 'One line per reply, {"result": <reply>}; a failure mid-stream is a last line '
        '{"error": <google.rpc.Status>}.',
        "properties": {"result": reply, "error": status},
        "minProperties": 1,
        "maxProperties": 1,
    }
    events = {
        "type": "string",
        "description": "Server-sent events: one `data:` event per reply (its JSON); a failure is an `event: error` "
        "whose data is the google.rpc.Status, a clean end an `event: end`.",
    }
    return {
        "description": "OK: the replies as they come (headers wait for the first; a failure before it is answered "
        "with its own status).",
        "content": {framing.NDJSON: {"schema": line}, framing.SSE: {"schema": events}},
    }


def websocket_responses(
    request: Schema, reply: Schema, status: Schema, error: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    """The answers of a request stream's route: the upgrade, or a refusal before it."""
    return {
        "101": {"description": WEBSOCKET, "x-websocket-frames": {"request": request, "reply": reply, "error": status}},
        "400": error("A header is malformed (grpc-timeout, a forwarded header)."),
        "426": error(UPGRADE_REQUIRED),
        "default": error("Any other refusal before the upgrade (404 no route, 405 another verb)."),
    }
