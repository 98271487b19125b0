"""Records kept for a while and then forgotten, pure: the idempotency records and orders the shop holds in memory.

Decision: each store is bounded both by count and by age (by default 100,000 records, 24 hours). An idempotency
record only has to outlive the retries of its request, which come within seconds (the mesh's retries) or at worst
hours (a client repeating after an outage); 24 hours is the window payment APIs commonly promise for their
idempotency keys. The count bounds memory whatever the traffic: at a few hundred bytes a record, 100,000 of them
stay in the tens of megabytes. Past either bound the oldest records go first. Records are never replaced, so the
insertion order of a dict is their age order and every operation stays O(1) amortised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

MAX_RECORDS = 100_000
MAX_AGE_S = 24 * 3600.0
K = TypeVar("K")
V = TypeVar("V")


@dataclass
class BoundedRecords(Generic[K, V]):
    """A mapping that forgets its oldest entries past `max_records` entries or `max_age_s` seconds."""

    max_records: int = MAX_RECORDS
    max_age_s: float = MAX_AGE_S
    clock: Callable[[], float] = time.monotonic
    _entries: dict[K, tuple[float, V]] = field(default_factory=dict)

    def get(self, key: K) -> V | None:
        self._expire()
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: K, value: V) -> None:
        """Keep `value` under `key` (a new key: records are written once); the oldest go past the bounds."""
        self._expire()
        self._entries.pop(key, None)
        self._entries[key] = (self.clock(), value)
        while len(self._entries) > self.max_records:
            del self._entries[next(iter(self._entries))]

    def pop(self, key: K) -> V | None:
        self._expire()
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]

    def values(self) -> Iterator[V]:
        self._expire()
        return (value for _, value in self._entries.values())

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        oldest_kept = self.clock() - self.max_age_s
        while self._entries:
            key = next(iter(self._entries))
            if self._entries[key][0] > oldest_kept:
                return
            del self._entries[key]
