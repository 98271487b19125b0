"""Placeholder: the KV store (being written)."""

from __future__ import annotations

from typing import Any

from meshlet.devagent.raft import RaftIndex


class KVStore:
    def __init__(self, index: RaftIndex) -> None:
        self._index = index

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, data: dict[str, Any]) -> None:
        pass
