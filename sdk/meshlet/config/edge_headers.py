"""Which HTTP request headers the edge may pass upstream as gRPC metadata (``edge.forward_headers``). Some never
may: hop-by-hop headers describe one HTTP connection, pseudo headers and ``host`` become gRPC's own
``:authority``, gRPC reserves ``grpc-*`` and the framing headers for itself, and ``x-meshlet-*`` and the trace
context are the mesh's own, which a client outside it must not be able to set. Pure."""

from __future__ import annotations

import re

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer"}
    | {"transfer-encoding", "upgrade"}
)
GRPC_OWN = frozenset(
    {"host", "content-type", "content-length", "content-encoding", "accept-encoding", "user-agent", "x-request-id"}
)
MESH_OWN = frozenset({"traceparent", "tracestate", "baggage"})
NEVER_PREFIXES = ("grpc-", "x-meshlet-", ":")
_METADATA_KEY = re.compile(r"^[0-9a-z_.-]+$")  # what gRPC allows in a metadata key


def forwardable_header(name: str) -> str:
    """The header's metadata key (lowercase); raises ValueError saying why it may not be forwarded and the fix."""
    key = name.strip().lower()
    if key.startswith(NEVER_PREFIXES):
        prefix = next(p for p in NEVER_PREFIXES if key.startswith(p))
        what = "a pseudo header" if prefix == ":" else f"{prefix}* headers are reserved"
        raise ValueError(f"{name!r}: {what} and never forwarded; remove it")
    if key in HOP_BY_HOP:
        raise ValueError(f"{name!r} is a hop-by-hop header (RFC 9110 7.6.1), never forwarded; remove it")
    if key == "x-request-id":
        raise ValueError(f"{name!r} always goes upstream (the edge's request id); remove it")
    if key in GRPC_OWN:
        raise ValueError(f"{name!r} is gRPC's own (HTTP framing or the channel's), never forwarded; remove it")
    if key in MESH_OWN:
        raise ValueError(f"{name!r} is the mesh's trace context, which the edge continues itself; remove it")
    if not _METADATA_KEY.match(key) or key.endswith("-bin"):
        raise ValueError(f"{name!r} cannot be a gRPC metadata key (letters, digits, - _ . and no -bin); remove it")
    return key


def identity_header(name: str) -> str:
    """A header the edge sets upstream from a verified caller's claim (``edge.auth.claims_to_headers``): any gRPC
    metadata key but gRPC's own, the connection's, the trace context and ``x-meshlet-subject`` (set by the edge)."""
    key = name.strip().lower()
    if key.startswith(("grpc-", ":")) or key in HOP_BY_HOP | GRPC_OWN | MESH_OWN or key == "x-meshlet-subject":
        raise ValueError(f"{name!r} is reserved (gRPC's, the connection's, the mesh's or the subject's); rename it")
    if not _METADATA_KEY.match(key) or key.endswith("-bin"):
        raise ValueError(f"{name!r} cannot be a gRPC metadata key (letters, digits, - _ . and no -bin); rename it")
    return key
