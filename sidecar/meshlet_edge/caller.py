"""Who is calling: set by the edge's auth for the request's task, read by the policies after it (rate limits key
on it, the cache keeps a private entry per caller). A context variable, not a request key: aiohttp warns on plain
request keys, and its typed ones are newer than the oldest aiohttp meshlet takes."""

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
