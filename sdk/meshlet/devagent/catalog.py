"""Placeholder: the catalog, health checks and per-service indexes (being written)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshlet.devagent.raft import RaftIndex


class Catalog:
    def __init__(
        self, index: RaftIndex, *, node: str, node_id: str, datacenter: str, clock: Callable[[], float]
    ) -> None:
        self._index = index

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, data: dict[str, Any]) -> None:
        pass
