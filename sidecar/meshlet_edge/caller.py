"""Who is calling: set by the edge's auth for the request's task, read by the policies after it (rate limits key
on it, the cache keeps a private entry per caller). A context variable, not a request key: aiohttp warns on plain
request keys, and its typed ones are newer than the oldest aiohttp meshlet takes.

A token's subject is unique only within its issuer (OpenID Connect Core 2: ``sub`` is "locally unique ... within
the Issuer"): where the edge trusts several issuers, two of them may both have an ``alice``, so the caller's
`name` (its consumer, and the owner of its private cache entries) names the issuer too."""

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
    issuer: str = ""  # the token's iss where the edge trusts more than one issuer; "" otherwise

    @property
    def name(self) -> str:
        """Who this is, distinct from every other caller: ``jwt:<sub>`` (``jwt:<sub>@<iss>`` among several
        issuers) or ``api_key:<owner>``."""
        if self.issuer:
            return f"{self.kind}:{self.subject}@{self.issuer}"
        return f"{self.kind}:{self.subject}"


current: ContextVar[Caller | None] = ContextVar("meshlet_edge_caller", default=None)
