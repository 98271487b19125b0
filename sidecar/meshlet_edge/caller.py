"""Who is calling, once edge.auth has verified it: set for the request's task by meshlet_edge.auth, read by the
policies after it (rate limits key their buckets by it). None: auth has not run for this request."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Caller:
    subject: str
    kind: Literal["jwt", "api_key", "anonymous"]
    plan: str | None
    scopes: frozenset[str]
    claims: Mapping[str, Any]


current: ContextVar[Caller | None] = ContextVar("meshlet_edge_caller", default=None)
