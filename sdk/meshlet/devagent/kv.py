"""Consul's key/value store: entries with create/modify indexes, check-and-set, and tombstones.

Pure state behind ``/v1/kv``. Indexes follow Consul's state store so blocking queries behave the same: a
key reads at its own ``ModifyIndex``; a prefix reads at the highest index among its entries and the
tombstones of keys deleted under it, so a delete wakes a watcher of the prefix; anything else reads at the
index of the last KV write. A write that changes nothing takes no index and wakes nobody.
"""

from __future__ import annotations

import base64
import bisect
from dataclasses import dataclass, replace
from typing import Any

from meshlet.devagent.raft import RaftIndex

MAX_VALUE_BYTES = 512 * 1024  # Consul's kv_max_value_size


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One key. An empty value is stored as None, which Consul renders as ``"Value": null``."""

    key: str
    value: bytes | None
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0
    session: str = ""

    def to_json(self) -> dict[str, Any]:
        """The entry as Consul renders it, field for field and in Consul's order."""
        rendered: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": None if self.value is None else base64.b64encode(self.value).decode("ascii"),
        }
        if self.session:
            rendered["Session"] = self.session
        rendered["CreateIndex"] = self.create_index
        rendered["ModifyIndex"] = self.modify_index
        return rendered

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DirEntry:
        value = data.get("Value")
        return cls(
            key=data["Key"],
            value=None if value is None else base64.b64decode(value),
            flags=int(data.get("Flags", 0)),
            create_index=int(data["CreateIndex"]),
            modify_index=int(data["ModifyIndex"]),
            lock_index=int(data.get("LockIndex", 0)),
            session=data.get("Session", ""),
        )


class KVStore:
    """The KV table, its tombstones and their shared table index; every write advances the Raft index."""

    def __init__(self, index: RaftIndex) -> None:
        self._index = index
        self._entries: dict[str, DirEntry] = {}
        self._sorted_keys: list[str] = []
        self._tombstones: dict[str, int] = {}
        self._table_index = 0

    # ------------------------------------------------------------------------------------------ reads

    def get(self, key: str) -> DirEntry | None:
        return self._entries.get(key)

    def table_index(self) -> int:
        """The index of the last KV write of any key (Consul's max over the kvs and tombstones tables)."""
        return self._table_index

    def key_index(self, key: str) -> int:
        """The index a single-key read reports: the entry's ModifyIndex, else the table index."""
        entry = self._entries.get(key)
        return entry.modify_index if entry is not None else self._table_index

    def entries(self, prefix: str) -> list[DirEntry]:
        """Every entry whose key starts with `prefix`, in key order."""
        start = bisect.bisect_left(self._sorted_keys, prefix)
        found = []
        for key in self._sorted_keys[start:]:
            if not key.startswith(prefix):
                break
            found.append(self._entries[key])
        return found

    def prefix_index(self, prefix: str) -> int:
        """The index a prefix read reports: the highest entry or tombstone under `prefix`, else the table's."""
        if not prefix:
            return self._table_index
        highest = max((entry.modify_index for entry in self.entries(prefix)), default=0)
        for key, deleted_at in self._tombstones.items():
            if deleted_at > highest and key.startswith(prefix):
                highest = deleted_at
        return highest or self._table_index

    def keys(self, prefix: str, separator: str = "") -> list[str]:
        """Keys under `prefix`; with a separator, everything past its first occurrence after the prefix
        is rolled up into one ``prefix…separator`` key (a directory listing)."""
        listed: dict[str, None] = {}
        for entry in self.entries(prefix):
            cut = entry.key.find(separator, len(prefix)) if separator else -1
            listed.setdefault(entry.key if cut < 0 else entry.key[: cut + len(separator)])
        return list(listed)

    # ------------------------------------------------------------------------------------------ writes

    def set(self, key: str, value: bytes | None, flags: int = 0) -> bool:
        """Store `value` under `key`; always True. Rewriting the same value and flags changes nothing."""
        existing = self._entries.get(key)
        value = value or None
        if existing is not None and existing.value == value and existing.flags == flags:
            return True
        index = self._index.advance()
        if existing is None:
            entry = DirEntry(key=key, value=value, flags=flags, create_index=index, modify_index=index)
            bisect.insort(self._sorted_keys, key)
        else:
            entry = replace(existing, value=value, flags=flags, modify_index=index)
        self._entries[key] = entry
        self._table_index = index
        return True

    def check_and_set(self, key: str, value: bytes | None, flags: int, modify_index: int) -> bool:
        """Set only if the key's ModifyIndex is `modify_index`; 0 means "only if the key does not exist"."""
        existing = self._entries.get(key)
        current = existing.modify_index if existing is not None else 0
        if current != modify_index:
            return False
        return self.set(key, value, flags)

    def delete(self, key: str) -> bool:
        """Remove `key`, leaving a tombstone at the delete's index; deleting a missing key is a no-op."""
        if key not in self._entries:
            return True
        index = self._index.advance()
        self._remove(key, index)
        return True

    def check_and_delete(self, key: str, modify_index: int) -> bool:
        """Delete only if the key's ModifyIndex is `modify_index`. As in Consul, a missing key counts as
        deleted (True) while index 0 never matches an existing key."""
        existing = self._entries.get(key)
        if existing is None:
            return True
        if existing.modify_index != modify_index:
            return False
        return self.delete(key)

    def delete_tree(self, prefix: str) -> bool:
        """Remove every key under `prefix` (all keys for ``""``) in one write."""
        doomed = [entry.key for entry in self.entries(prefix)]
        if doomed:
            index = self._index.advance()
            for key in doomed:
                self._remove(key, index)
        return True

    def _remove(self, key: str, index: int) -> None:
        del self._entries[key]
        del self._sorted_keys[bisect.bisect_left(self._sorted_keys, key)]
        self._tombstones[key] = index
        self._table_index = index

    # ------------------------------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        return {
            "table_index": self._table_index,
            "entries": [self._entries[key].to_json() for key in self._sorted_keys],
            "tombstones": dict(self._tombstones),
        }

    def restore(self, data: dict[str, Any]) -> None:
        entries = [DirEntry.from_json(item) for item in data.get("entries", [])]
        self._entries = {entry.key: entry for entry in entries}
        self._sorted_keys = sorted(self._entries)
        self._tombstones = {key: int(index) for key, index in data.get("tombstones", {}).items()}
        self._table_index = int(data.get("table_index", 0))
