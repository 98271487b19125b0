"""Placeholder: the Connect CA (being written)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshlet.devagent.raft import RaftIndex


class ConnectCA:
    def __init__(
        self, index: RaftIndex, *, trust_domain: str, datacenter: str, leaf_ttl_s: float, now: Callable[[], float]
    ) -> None:
        self._index = index

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, data: dict[str, Any]) -> None:
        pass
