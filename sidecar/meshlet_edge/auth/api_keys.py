"""API keys, held only as the SHA-256 hex of each key -> who owns it, its plan and scopes: loaded from a file, or
followed in Consul KV (``meshlet/edge/keys/<hash>`` holding JSON ``{owner, plan, scopes}``) by a blocking query, so
that a key put or deleted there counts within a second or two. A key arriving with a request is hashed and looked
up by that hash; the key itself is never stored nor compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshlet.discovery.consul_client import ConsulFactory, go_duration
from meshlet.errors import ConfigError
from meshlet_edge.forwarding import carried

log = logging.getLogger("meshlet.edge.auth")

_HEX = re.compile(r"^[0-9a-f]{64}$")
WAIT_S = 30.0
FIRST_ANSWER_S = 5.0


@dataclass(frozen=True)
class ApiKey:
    owner: str
    plan: str | None
    scopes: frozenset[str]


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_entry(value: Any) -> ApiKey:
    """An entry's ``{owner, plan, scopes}``; ValueError saying what is wrong."""
    if not isinstance(value, Mapping) or not isinstance(value.get("owner"), str) or not value["owner"]:
        raise ValueError("must be a mapping with an owner (and optionally plan and scopes)")
    if not carried(value["owner"]):  # it goes upstream as x-meshlet-subject, which could not carry it
        raise ValueError("its owner must be printable ASCII (it goes upstream as x-meshlet-subject)")
    scopes = value.get("scopes") or []
    plan = value.get("plan")
    if not isinstance(scopes, list) or (plan is not None and not isinstance(plan, str)):
        raise ValueError("scopes must be a list and plan a name")
    return ApiKey(value["owner"], plan, frozenset(str(scope) for scope in scopes))


class KeyTable:
    """The keys known now; replaced whole on each reload, so a lookup never sees half an update."""

    def __init__(self) -> None:
        self._keys: dict[str, ApiKey] = {}

    def replace(self, keys: dict[str, ApiKey]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def digests(self) -> frozenset[str]:
        return frozenset(self._keys)

    def lookup(self, presented: str) -> ApiKey | None:
        """The key's entry, found by its hash: the comparison a lookup makes can only leak timing about a SHA-256
        of what the client sent, which tells nothing about any stored key (so no constant-time compare is needed
        here, unlike comparing a secret itself)."""
        return self._keys.get(key_hash(presented))


def read_file(path: Path) -> dict[str, ApiKey]:
    """``<sha256 hex>: {owner, plan, scopes}`` per key, YAML or JSON; ConfigError naming the bad entry."""
    field = "edge.auth.api_keys.path"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(field, str(path), f"cannot be read as YAML: {error}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(field, str(path), "must map each key's SHA-256 hex to {owner, plan, scopes}")
    keys = {}
    for name, value in data.items():
        digest = str(name).lower()
        try:
            if not _HEX.match(digest):
                raise ValueError("is not a SHA-256 hex digest (64 hex digits): store `sha256sum` of the key")
            keys[digest] = parse_entry(value)
        except ValueError as error:
            raise ConfigError(f"{field}: entry {name}", str(path), str(error)) from None
    return keys


def from_kv(entries: Any, prefix: str) -> dict[str, ApiKey]:
    """The keys of a recursive KV read under `prefix`; a malformed entry is logged and left out."""
    keys = {}
    for entry in entries or ():
        digest = str(entry.get("Key", ""))[len(prefix) :].lower()
        try:
            if not _HEX.match(digest):
                raise ValueError("its name is not a SHA-256 hex digest")
            keys[digest] = parse_entry(json.loads(entry.get("Value") or b"null"))
        except ValueError as error:
            log.warning("ignoring Consul KV entry %s: %s", entry.get("Key"), error)
    return keys


class ConsulKeys:
    """Follows ``<prefix>`` in Consul KV with blocking queries and keeps `table` equal to it. Consul unreachable:
    the keys held stay (a revocation waits for Consul to answer again), retried with a backoff."""

    def __init__(self, table: KeyTable, consul: ConsulFactory, prefix: str) -> None:
        self.table = table
        self._consul = consul
        self._prefix = prefix
        self._index = 0
        self._answered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="api-keys:consul")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_ANSWER_S):
                await self._answered.wait()
        if not self._answered.is_set():
            log.warning("no API keys from Consul KV %s yet: every key is refused until it answers", self._prefix)

    async def _run(self) -> None:
        client = self._consul()
        failures = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(WAIT_S * 1.1 + 5):
                        index, entries = await client.kv.get(
                            self._prefix, index=self._index, wait=go_duration(WAIT_S), recurse=True
                        )
                except Exception as error:  # keep the keys held; try again
                    failures += 1
                    self._index = 0
                    if failures == 1:
                        log.warning("API keys from Consul KV %s: %s; keeping %d", self._prefix, error, len(self.table))
                    await asyncio.sleep(min(5.0, 0.1 * 2**failures))
                    continue
                failures = 0
                new_index = int(index)
                self._index = 0 if new_index < self._index else max(new_index, 1)
                keys = from_kv(entries, self._prefix)
                if set(keys) != self.table.digests() or not self._answered.is_set():
                    log.info("API keys from Consul KV %s: %d", self._prefix, len(keys))
                self.table.replace(keys)
                self._answered.set()
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
