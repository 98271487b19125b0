"""Where cached answers live: in this process (cachetools' TLRUCache: least recently used out first, within a
byte budget, each entry gone at its own expiry) or in Redis, shared by every replica (an entry's TTL is Redis's).

Invalidation is by generation: each rule has a number that a write through the edge increments, and it is part
of every key of the rule's entries, so dropping them all is one increment (one ``INCR`` in Redis, seen by every
replica on its next lookup), never a scan; the orphaned entries age out by TTL or LRU. A lookup reads the
generation and the entry in one round trip (a Lua script), and returns the generation, so that an answer fetched
while a write invalidated the rule is stored under the old one, where nobody looks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import TLRUCache

from meshlet_edge.redis_client import redis_client

PREFIX = "meshlet:edge:cache:"
_HEADER_END = b"\n\n"


@dataclass(frozen=True)
class Entry:
    """One stored answer (a 200), its JSON body as it was before any content coding."""

    stored_at: float  # wall clock: replicas that share a Redis agree on it
    ttl_s: float
    etag: str
    content_type: str
    body: bytes

    def age(self, now: float) -> float:
        return max(0.0, now - self.stored_at)

    def encode(self) -> bytes:
        head = f"{self.stored_at:.3f}\n{self.ttl_s:.3f}\n{self.etag}\n{self.content_type}"
        return head.encode() + _HEADER_END + self.body

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        head, _, body = data.partition(_HEADER_END)
        stored_at, ttl_s, etag, content_type = head.decode().split("\n")
        return cls(float(stored_at), float(ttl_s), etag, content_type, body)


class Store(Protocol):
    remote: bool  # answers over the network: bounded by edge.cache.timeout

    async def lookup(self, rule_id: str, key: str) -> tuple[int, Entry | None]:
        """(the rule's generation, the entry under `key` in it, if fresh)."""

    async def put(self, rule_id: str, generation: int, key: str, entry: Entry) -> None: ...

    async def invalidate(self, rule_id: str) -> None: ...

    async def close(self) -> None: ...


def _size(entry: Entry) -> int:
    return len(entry.body) + len(entry.etag) + len(entry.content_type) + 200  # the key and the object's own weight


class MemoryStore:
    """In this process, for one replica: a write through another replica does not reach it (its entries live
    out their TTL); use Redis to share."""

    remote = False

    def __init__(self, max_bytes: int, clock: Any = time.time) -> None:
        self._entries: TLRUCache[str, Entry] = TLRUCache(
            maxsize=max_bytes, ttu=lambda _key, entry, now: now + entry.ttl_s, timer=clock, getsizeof=_size
        )
        self._generations: dict[str, int] = {}
        self._clock = clock

    async def lookup(self, rule_id: str, key: str) -> tuple[int, Entry | None]:
        generation = self._generations.get(rule_id, 0)
        return generation, self._entries.get(f"{rule_id}:{generation}:{key}")

    async def put(self, rule_id: str, generation: int, key: str, entry: Entry) -> None:
        if _size(entry) > self._entries.maxsize:
            return  # larger than the whole budget: not worth evicting everything else for
        self._entries[f"{rule_id}:{generation}:{key}"] = entry

    async def invalidate(self, rule_id: str) -> None:
        self._generations[rule_id] = self._generations.get(rule_id, 0) + 1

    @property
    def bytes_used(self) -> float:
        return self._entries.currsize

    async def close(self) -> None:
        self._entries.clear()


# KEYS[1]: the rule's generation; ARGV[1]: the rule's key prefix, ARGV[2]: the entry's key.
_LOOKUP = """
local generation = redis.call('GET', KEYS[1]) or '0'
return {generation, redis.call('GET', ARGV[1] .. generation .. ':' .. ARGV[2])}
"""


class RedisStore:
    """In Redis, shared by every replica configured with the same URL. Any error (refused, timed out) is raised
    to the caller, which bypasses the cache for that request."""

    remote = True

    def __init__(self, url: str, timeout_s: float) -> None:
        self._redis = redis_client(url, timeout_s, field="edge.cache.store")
        self._lookup = self._redis.register_script(_LOOKUP)

    async def lookup(self, rule_id: str, key: str) -> tuple[int, Entry | None]:
        generation, data = await self._lookup(keys=[f"{PREFIX}gen:{rule_id}"], args=[f"{PREFIX}{rule_id}:", key])
        return int(generation), None if data is None else Entry.decode(data)

    async def put(self, rule_id: str, generation: int, key: str, entry: Entry) -> None:
        milliseconds = max(1, int(entry.ttl_s * 1000))
        await self._redis.set(f"{PREFIX}{rule_id}:{generation}:{key}", entry.encode(), px=milliseconds)

    async def invalidate(self, rule_id: str) -> None:
        await self._redis.incr(f"{PREFIX}gen:{rule_id}")

    async def close(self) -> None:
        await self._redis.aclose()
