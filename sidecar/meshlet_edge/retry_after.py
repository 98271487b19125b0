"""``Retry-After`` (RFC 9110 10.2.3: whole seconds) for an error answer whose upstream asked callers to come back
later: a gRPC pushback (the ``grpc-retry-pushback-ms`` trailer, gRPC A6) or a ``google.rpc.RetryInfo`` in its
Status. Rounded up, so a client that waits what it is told never comes back early; the longer of the two wins.
A pushback that says "do not retry" (negative or unparseable) gives no header. Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from google.rpc import error_details_pb2, status_pb2

from meshlet.resilience.backoff import parse_pushback

PUSHBACK_KEY = "grpc-retry-pushback-ms"


def retry_after(trailers: Iterable[tuple[str, Any]] | None, status: status_pb2.Status) -> str | None:
    """The header's value in seconds, or None when the upstream said nothing of when to come back."""
    waits = [wait for wait in (_pushback_s(trailers), _retry_info_s(status)) if wait is not None]
    if not waits:
        return None
    return str(math.ceil(max(waits)))


def _pushback_s(trailers: Iterable[tuple[str, Any]] | None) -> float | None:
    for key, value in trailers or ():
        if key == PUSHBACK_KEY:
            found: float | None = parse_pushback(value).retry_after_s
            return found
    return None


def _retry_info_s(status: status_pb2.Status) -> float | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay
            return max(0.0, float(delay.seconds) + float(delay.nanos) / 1e9)
    return None
