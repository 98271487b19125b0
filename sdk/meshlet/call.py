"""Call and InboundCall: the one object each pipeline passes from stage to stage.

A stage reads and annotates the call; it never looks inside ``request`` (a typed message, raw bytes, or an
async iterator of either), so the SDK's typed calls and the sidecar's raw bytes share every stage. Per call,
the Call is the only allocation the pipeline makes that it can avoid.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshlet.deadline import Deadline
from meshlet.endpoints import Endpoint

MetadataValue = str | bytes
Metadata = Sequence[tuple[str, MetadataValue]]
Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None


class Cardinality(enum.Enum):
    """The four RPC kinds as data, so one pipeline serves them all."""

    UNARY_UNARY = (False, False)
    UNARY_STREAM = (False, True)
    STREAM_UNARY = (True, False)
    STREAM_STREAM = (True, True)

    @property
    def client_streaming(self) -> bool:
        return self.value[0]

    @property
    def server_streaming(self) -> bool:
        return self.value[1]


@dataclass(slots=True, eq=False)
class Method:
    """One method of one upstream as the caller's stub sees it, built once and reused by every call.

    Hashes by identity, so the transport can key its per-channel multicallables on it with one dict lookup.
    """

    path: str  # "/pkg.Service/Method"
    kind: Cardinality
    idempotent: bool  # safe to re-send after it may have reached a server
    serializer: Serializer = None
    deserializer: Deserializer = None
    client_streaming: bool = field(init=False)  # the kind's flags as plain attributes: read on every call
    server_streaming: bool = field(init=False)

    def __post_init__(self) -> None:
        self.client_streaming, self.server_streaming = self.kind.value

    @property
    def service(self) -> str:
        return self.path[1:].partition("/")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


@dataclass(slots=True, eq=False)
class Call:
    """One outbound call, from the caller's stub to the endpoint that answers it."""

    upstream: str
    method: Method
    request: Any
    metadata: Metadata | None = None
    timeout: float | None = None  # the caller's, as grpc's API takes it; ApplyDeadline turns it into `deadline`
    deadline: Deadline | None = None
    wait_for_ready: bool | None = None
    attempt: int = 0  # attempts started so far
    endpoint: Endpoint | None = None  # the current attempt's endpoint, set by PickEndpoint
    may_have_reached_server: bool = False  # False only while the current attempt provably never left
    tried: list[Endpoint] | None = None  # endpoints of earlier attempts, allocated on the first retry
    transport_call: Any = None  # the last attempt's grpc call object, for its metadata, set by the send stage
    attempt_timeout_s: float = 0.0  # the time the current attempt was sent with, set by the send stage

    def attempt_metadata(self) -> Metadata | None:
        """The caller's metadata plus ``grpc-previous-rpc-attempts`` on retries (gRPC A6)."""
        if self.attempt <= 1:
            return self.metadata
        return (*(self.metadata or ()), ("grpc-previous-rpc-attempts", str(self.attempt - 1)))


@dataclass(slots=True, eq=False)
class InboundCall:
    """One inbound call, as the server side sees it before the handler runs."""

    method: str
    metadata: Metadata
    request: Any = None  # opaque to the stages: a message, bytes, or an iterator of them
    context: Any = None  # the transport's per-call context (grpc.aio.ServicerContext), for the terminal
    deadline: Deadline | None = None
    peer_uri: str | None = None  # the caller's verified SPIFFE ID, when mTLS is on
    peer_address: str = ""
    peer_refusal: str | None = None  # why the caller's certificate names no identity we accept (then peer_uri is None)


# gRPC's path: "/" service "/" method, both protobuf names (the method patterns of the config are the same shape).
_CANONICAL_METHOD = re.compile(r"/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*")


def is_canonical_method(path: str) -> bool:
    """Whether `path` is exactly ``/<package.Service>/<Method>``: a leading ``/``, two non-empty segments of
    protobuf name characters (letters, digits, ``_``, and ``.`` in the service), nothing after.

    Everything that decides by method (per-method intentions, rate limits, routes) matches canonical paths only,
    and some servers route a path such as ``shop.Admin/Drop`` or ``/shop.Admin/Drop/`` to ``/shop.Admin/Drop``
    (grpc-go before 1.79.3, CVE-2026-33186), or decode ``/shop.Admin/Dr%6Fp`` to it: so every meshlet listener
    refuses any other path before its stages run."""
    return _CANONICAL_METHOD.fullmatch(path) is not None


def method_matches(path: str, pattern: str) -> bool:
    """Whether a method path (``/pkg.Service/Method``) matches a pattern: ``*``, ``/pkg.Service/*`` or exact."""
    if pattern == "*" or pattern == path:
        return True
    return pattern.endswith("/*") and path.startswith(pattern[:-1])


def matches_any(path: str, patterns: Sequence[str]) -> bool:
    return any(method_matches(path, pattern) for pattern in patterns)


# The mesh's own calls (a sidecar asking an upstream's reflection service which methods it has) carry this
# key: the sidecars keep them out of the users' RED numbers, traces and access logs, so a reflection service
# that is absent (UNIMPLEMENTED) every few minutes is no error of the app's. Only these paths may be the mesh's
# own: a caller cannot hide its other calls by setting the key.
MESH_OWN_KEY = "x-meshlet-own"
MESH_OWN_METADATA: tuple[tuple[str, str], ...] = ((MESH_OWN_KEY, "reflection"),)
MESH_OWN_PATHS = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")


def may_be_mesh_own(path: str) -> bool:
    """Whether calls to `path` may be the mesh's own (decided once per method, where pipelines are built)."""
    return path.startswith(MESH_OWN_PATHS)


def is_mesh_own(metadata: Metadata | None) -> bool:
    """Whether a call's metadata marks it as the mesh's own."""
    return bool(metadata) and any(key == MESH_OWN_KEY for key, _ in metadata or ())
