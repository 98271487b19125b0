"""Payments' idempotency records in Consul KV, shared by every payments instance.

Why: Charge is IDEMPOTENT, so the mesh may re-send a charge to *another* instance (a retry, a hedge, an ejected
endpoint); with records per instance that instance would charge again. Each record is written create-only
(``PUT /v1/kv/<prefix>/<sha256 of the key>?cas=0``): of two instances racing on one key exactly one write wins,
and the other reads the winner's record and answers with it (replayed) or refuses a key reused for another
payment. The KV key is the idempotency key's SHA-256, so any key a client sends (slashes, dots, "..", very long)
makes one safe key name; the record keeps the client's key and when it was made. Records are kept for a retention
(24 h by default, ``SHOP_LEDGER_RETENTION_S``, as payment providers keep idempotency keys): every instance sweeps
the prefix now and then and deletes the older ones (check-and-set on their index, so a sweep never removes a
record written meanwhile). A client retrying a charge after the retention is charged again: keep retries within it.

`from_environment` picks the book: Consul KV when ``CONSUL_HTTP_ADDR`` is set (payments runs beside an agent, as
in the demo and on Kubernetes), the in-memory `Ledger` otherwise. No meshlet import: payments is a plain app.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
import consul
import consul.aio

from meshlet_shop.payments.idempotency import Charge, Ledger, replay

log = logging.getLogger("meshlet_shop.payments")
KV_PREFIX = "shop/payments/charges"
RETENTION_S = 24 * 3600.0
SWEEP_EVERY_S = 600.0
WRITE_ATTEMPTS = 3  # a record deleted between our refused write and our read: write again


class LedgerUnavailable(Exception):
    """The ledger could not be asked: nothing was charged, the call may be repeated."""


class ChargeBook(Protocol):
    where: str

    async def charge(self, key: str, order_id: str, amount_cents: int, currency: str) -> tuple[Charge, bool]: ...

    async def sweep_forever(self) -> None: ...

    async def close(self) -> None: ...


class MemoryBook:
    """The in-memory `Ledger` behind the async interface: one instance's records only."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.where = "memory (this instance only)"

    async def charge(self, key: str, order_id: str, amount_cents: int, currency: str) -> tuple[Charge, bool]:
        return self.ledger.charge(key, order_id, amount_cents, currency)

    async def sweep_forever(self) -> None:
        return None  # bounded in memory already (meshlet_shop.bounded)

    async def close(self) -> None:
        return None


def kv_key(prefix: str, idempotency_key: str) -> str:
    """The KV key of a record: the idempotency key hashed, so no client key can name another path."""
    return f"{prefix}/{hashlib.sha256(idempotency_key.encode()).hexdigest()}"


def new_charge_id() -> str:
    """Unique across instances and restarts (a counter per instance would repeat)."""
    return f"ch-{uuid.uuid4().hex[:16]}"


class ConsulLedger:
    def __init__(
        self,
        client: consul.aio.Consul,
        *,
        where: str,
        prefix: str = KV_PREFIX,
        new_id: Callable[[], str] = new_charge_id,
        retention_s: float = RETENTION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.where = where
        self.prefix = prefix
        self.new_id = new_id
        self.retention_s = retention_s
        self.clock = clock

    async def charge(self, key: str, order_id: str, amount_cents: int, currency: str) -> tuple[Charge, bool]:
        """The charge for `key` and whether it existed already; KeyReused for another payment under the key,
        LedgerUnavailable when Consul does not answer (then nothing was charged)."""
        path = kv_key(self.prefix, key)
        for _ in range(WRITE_ATTEMPTS):
            made = Charge(self.new_id(), key, order_id, amount_cents, currency, created_at=self.clock())
            try:
                if await self.client.kv.put(path, made.to_json(), cas=0):
                    return made, False
                _, entry = await self.client.kv.get(path)
            except (consul.ConsulException, aiohttp.ClientError, OSError, TimeoutError) as error:
                raise LedgerUnavailable(f"Consul KV at {self.where} did not answer ({error})") from None
            if entry is None:
                continue
            try:
                earlier = Charge.from_json(entry["Value"] or b"")
            except (ValueError, KeyError, TypeError):
                raise LedgerUnavailable(f"the record {path} in Consul KV is not a charge: remove it") from None
            return replay(earlier, order_id, amount_cents, currency), True
        raise LedgerUnavailable(f"the record {path} in Consul KV kept changing")

    async def sweep(self) -> int:
        """Delete the records older than the retention; returns how many went. LedgerUnavailable if Consul
        does not answer. A record that is no charge, or has no creation time, is left alone."""
        oldest = self.clock() - self.retention_s
        try:
            _, entries = await self.client.kv.get(f"{self.prefix}/", recurse=True)
            removed = 0
            for entry in entries or ():
                try:
                    created = Charge.from_json(entry["Value"] or b"").created_at
                except (ValueError, KeyError, TypeError):
                    continue
                if 0 < created < oldest and await self.client.kv.delete(entry["Key"], cas=entry["ModifyIndex"]):
                    removed += 1
        except (consul.ConsulException, aiohttp.ClientError, OSError, TimeoutError) as error:
            raise LedgerUnavailable(f"Consul KV at {self.where} did not answer ({error})") from None
        return removed

    async def sweep_forever(self) -> None:
        """Sweep every SWEEP_EVERY_S (jittered, so instances do not sweep together); never raises."""
        while True:
            await asyncio.sleep(SWEEP_EVERY_S * random.uniform(0.5, 1.5))
            try:
                removed = await self.sweep()
            except LedgerUnavailable as error:
                log.warning("ledger retention: %s; trying again later", error)
                continue
            if removed:
                log.info("ledger retention: removed %d charge records older than %.0fs", removed, self.retention_s)

    async def close(self) -> None:
        await self.client.close()


def consul_address(address: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` from ``CONSUL_HTTP_ADDR`` (``host:port`` or ``http(s)://host:port``); ValueError
    naming the variable when it is not one."""
    scheme_part, sep, authority = address.rpartition("//")
    host_part, colon, port_part = authority.rpartition(":")
    if host_part.count(":") > 1 and not host_part.startswith("[") and port_part.isdigit():
        address = f"{scheme_part}{sep}[{host_part}]{colon}{port_part}"  # http://$(HOST_IP):8500 on an IPv6 node
    parsed = urllib.parse.urlsplit(address if "//" in address else f"//{address}")
    scheme = parsed.scheme or "http"
    try:
        port = parsed.port or (8501 if scheme == "https" else 8500)
    except ValueError:
        port = 0
    if scheme not in ("http", "https") or not parsed.hostname or not port:
        raise ValueError(f"CONSUL_HTTP_ADDR={address!r}: expected host:port or http(s)://host:port")
    return scheme, parsed.hostname, port


def from_environment(environ: Mapping[str, str], instance_id: str) -> ChargeBook:
    """Consul KV when ``CONSUL_HTTP_ADDR`` is set (with ``CONSUL_HTTP_TOKEN``, or ``CONSUL_HTTP_TOKEN_FILE`` which
    wins when not empty, as in Consul's client, and ``CONSUL_CACERT`` when set), else memory. Call it inside the
    event loop (the Consul client opens an aiohttp session)."""
    address = environ.get("CONSUL_HTTP_ADDR", "")
    if not address:
        return MemoryBook(Ledger(prefix=f"ch-{instance_id}"))
    scheme, host, port = consul_address(address)
    options: dict[str, Any] = {"host": host, "port": port, "scheme": scheme}
    token = environ.get("CONSUL_HTTP_TOKEN", "")
    if environ.get("CONSUL_HTTP_TOKEN_FILE"):
        with open(environ["CONSUL_HTTP_TOKEN_FILE"], encoding="utf-8") as file:
            token = file.read().strip() or token
    if token:
        options["token"] = token
    if ":" in host:
        host = options["host"] = f"[{host}]"  # py-consul pastes the host into its URLs
    if environ.get("CONSUL_CACERT"):
        options["verify"] = environ["CONSUL_CACERT"]
    retention = environ.get("SHOP_LEDGER_RETENTION_S", "")
    try:
        retention_s = float(retention) if retention else RETENTION_S
    except ValueError:
        retention_s = -1.0
    if not retention_s > 0:
        raise ValueError(f"SHOP_LEDGER_RETENTION_S={retention!r}: expected seconds above 0, e.g. 86400")
    return ConsulLedger(consul.aio.Consul(**options), where=f"{scheme}://{host}:{port}", retention_s=retention_s)
