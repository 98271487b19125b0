"""The metadata a call upstream carries from its HTTP request: the request id, and the headers
``edge.forward_headers`` names (checked at load by meshlet.config.edge_headers), every value of each, under its
lowercase name. A value gRPC metadata cannot carry (beyond printable ASCII) is the client's error. Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from meshlet_edge.request_id import METADATA_KEY
from meshlet_edge.transcode import BadRequest

_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


def carried(value: str) -> bool:
    """Whether gRPC metadata can carry `value` as it is: printable ASCII (the edge never rewrites an identity)."""
    return _PRINTABLE.match(value) is not None


class Headers(Protocol):
    def getall(self, key: str, default: list[str]) -> list[str]: ...


def upstream_metadata(headers: Headers, forward: Sequence[str], request_id: str) -> tuple[tuple[str, str], ...]:
    """``x-request-id`` first, then each forwarded header's values in the order the client sent them."""
    metadata = [(METADATA_KEY, request_id)]
    for key in forward:
        for value in headers.getall(key, []):
            if not carried(value):
                raise BadRequest(key, f"the {key} header holds characters gRPC metadata cannot carry: send ASCII")
            metadata.append((key, value.strip()))
    return tuple(metadata)
