"""The request id every edge response carries (``X-Request-Id``), sent upstream as ``x-request-id`` metadata and
written on the edge's log lines for the request. The caller's own id is kept when it is sane (visible ASCII, at
most `MAX_LENGTH` characters: a value that can travel as gRPC metadata and cannot forge a log line), else the edge
makes one, a random UUID as Envoy does."""

from __future__ import annotations

import contextvars
import logging
import os
import re

HEADER = "X-Request-Id"
METADATA_KEY = "x-request-id"
REQUEST_KEY = "request_id"  # where the id sits on the aiohttp request: request[REQUEST_KEY]
MAX_LENGTH = 128
_SANE = re.compile(rf"^[\x21-\x7e]{{1,{MAX_LENGTH}}}$")

current: contextvars.ContextVar[str | None] = contextvars.ContextVar("meshlet_edge_request_id", default=None)
"""The id of the request the running task serves: each aiohttp request runs in a task of its own."""


def request_id(sent: str | None) -> str:
    """The caller's id when it is sane, else a new one."""
    if sent is not None and _SANE.match(sent):
        return sent
    return random_uuid()


def random_uuid() -> str:
    """A random UUID (version 4, RFC 9562) as text, as ``str(uuid.uuid4())`` makes it without its object: one per
    request, from the same 16 random bytes of the OS."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC's variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every log record written while it is served (the edge's own lines and
    those of the mesh's outbound stages under it), as the JSON formatter's ``request_id`` field."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = current.get()
        if found is not None and not hasattr(record, "request_id"):
            record.request_id = found
        return True


def log_request_ids() -> None:
    """Install the filter on the root logger's handlers, once."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
