"""How a stream's messages and its final status look on the wire: which format an ``Accept`` header asks for, an
NDJSON line or a server-sent event per message, and the WebSocket close code of a gRPC status. Pure.

NDJSON lines and WebSocket replies wrap each message as ``{"result": ...}`` and a failure as ``{"error": Status}``
(grpc-gateway's envelope), because a bare message and a bare google.rpc.Status can hold the same keys; SSE needs
no envelope: a failure is its own event type (``event: error``), and a clean end is ``event: end``, so a browser's
EventSource can close instead of reconnecting to a stream that is over.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
STREAM_TYPES = (NDJSON, SSE)  # on a tie, the first: NDJSON reads with any line-by-line JSON client

WS_OK = 1000  # RFC 6455 normal closure
WS_STATUS_BASE = 4000  # 4000-4999 are the application's (RFC 6455 section 7.4.2): 4000 + the gRPC code
WS_REASON_BYTES = 123  # a close frame's reason fits in 125 bytes with its 2-byte code
END_MARK = "@end"  # {"@end": true}: the client's last frame, it ends the request stream (no field starts with @)


@dataclass(frozen=True, slots=True)
class _Range:
    media: str
    q: float

    def covers(self, media: str) -> int:
        """How specifically this range names `media`: 3 exactly, 2 by ``type/*``, 1 by ``*/*``, 0 not at all."""
        if self.media == media:
            return 3
        kind, _, sub = self.media.partition("/")
        if sub == "*" and media.startswith(kind + "/"):
            return 2
        return 1 if self.media == "*/*" else 0


def _ranges(accept: str) -> list[_Range]:
    ranges: list[_Range] = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append(_Range(media.lower(), q))
    return ranges


def stream_format(accept: str | None) -> str | None:
    """The stream format `accept` asks for: NDJSON or SSE, or None when it refuses both. No ``Accept``, ``*/*``
    and ``application/json`` get NDJSON (every line of it is a JSON text); ``text/event-stream`` gets SSE. Each
    type's weight is that of the most specific range naming it (RFC 9110 section 12.5.1); q=0 refuses it."""
    if accept is None or not accept.strip():
        return NDJSON
    ranges = _ranges(accept)
    best: tuple[float, str] | None = None
    for media in STREAM_TYPES:
        weight = _weight(ranges, media)
        if media == NDJSON:  # a JSON client reads NDJSON: application/json counts for it
            weight = max(weight, _weight(ranges, "application/json"))
        if weight > 0 and (best is None or weight > best[0]):
            best = (weight, media)
    return best[1] if best else None


def _weight(ranges: list[_Range], media: str) -> float:
    found = [(r.covers(media), r.q) for r in ranges if r.covers(media)]
    return max(found)[1] if found else 0.0


def ndjson_result(message_json: str) -> bytes:
    return b'{"result":' + message_json.encode() + b"}\n"


def ndjson_error(status_json: str) -> bytes:
    return b'{"error":' + status_json.encode() + b"}\n"


def sse_message(message_json: str) -> bytes:
    return b"data: " + message_json.encode() + b"\n\n"


def sse_error(status_json: str) -> bytes:
    return b"event: error\ndata: " + status_json.encode() + b"\n\n"


SSE_END = b"event: end\ndata: {}\n\n"  # data it must have: an event with no data is never dispatched


def ws_result(message_json: str) -> str:
    return '{"result":' + message_json + "}"


def ws_error(status_json: str) -> str:
    return '{"error":' + status_json + "}"


def ws_close(code: grpc.StatusCode) -> tuple[int, bytes]:
    """The close frame's code and reason for a call that ended with `code`: 1000 for OK, else 4000 + the gRPC
    code with its name as the reason (the whole Status went in the text frame before it)."""
    if code is grpc.StatusCode.OK:
        return WS_OK, b"OK"
    return WS_STATUS_BASE + code.value[0], code.name.encode()[:WS_REASON_BYTES]
