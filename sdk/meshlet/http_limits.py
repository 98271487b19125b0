"""The limits every HTTP server of meshlet's runs with (the sidecar's admin port, the SDK's metrics port, the
dev agent): what a hostile or broken client may cost it. Values and reasons are in the README's "Limits".

aiohttp has no header-read timeout of its own; its keep-alive timer is one: it closes a connection whose
handler is idle, and a handler is idle until a request's headers are complete, so a slowloris client that
trickles a header byte by byte is cut off after `HEADER_TIMEOUT_S`. A handler at work (a dev agent blocking
query waiting its ``?wait=``) is not idle and is never cut by it.
"""

from __future__ import annotations

from typing import Any

HEADER_TIMEOUT_S = 10.0  # also the idle keep-alive between two requests: a scraper or probe reconnects
MAX_LINE_BYTES = 8190  # request line and each header line
MAX_FIELD_BYTES = 8190  # one header's value
MAX_HEADERS = 128
MAX_BODY_BYTES = 1024 * 1024  # aiohttp's client_max_size: 413 past it (Consul's KV values stop at 512 KiB)

RUNNER_LIMITS: dict[str, Any] = {
    "keepalive_timeout": HEADER_TIMEOUT_S,
    "max_line_size": MAX_LINE_BYTES,
    "max_field_size": MAX_FIELD_BYTES,
    "max_headers": MAX_HEADERS,
}
"""Keyword arguments for ``web.AppRunner``, which hands them to each connection's request handler."""
