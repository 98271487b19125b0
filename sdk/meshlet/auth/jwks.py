"""An issuer's signing keys (a JWKS), fetched over HTTPS or read from a file, and kept fresh without a restart:
refetched every `refresh_s` (in the background, the old keys serving meanwhile) and at once when a token names a
key id not seen yet, at most once every `min_refetch_s` so that tokens with made-up ``kid`` cannot hammer the
issuer. A failed fetch keeps the last keys. Symmetric (``oct``) and encryption keys are never loaded: a verifier
holding only public keys cannot be tricked into checking an HMAC with one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
from jwt import PyJWK
from jwt.exceptions import PyJWKError

log = logging.getLogger("meshlet.auth")

Fetch = Callable[[], Awaitable[bytes]]
MAX_JWKS_BYTES = 256 * 1024
FETCH_TIMEOUT_S = 5.0


class JwksUnavailable(Exception):
    """The keys could not be fetched or read; the message says where and why."""


def parse_jwks(data: bytes, where: str) -> tuple[PyJWK, ...]:
    """The usable public signing keys of a JWKS document; JwksUnavailable when it is not one."""
    try:
        document = json.loads(data)
        entries = document["keys"]
        if not isinstance(entries, list):
            raise TypeError("keys is not a list")
    except (ValueError, KeyError, TypeError) as error:
        raise JwksUnavailable(f"{where} is not a JWKS document ({error})") from None
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
            continue  # never a shared secret; never an encryption key
        try:
            keys.append(PyJWK(entry))
        except PyJWKError as error:
            log.warning("skipping a key of %s (kid %r): %s", where, entry.get("kid"), error)
    return tuple(keys)


def https_fetch(uri: str, ca_file: Path | None = None, timeout_s: float = FETCH_TIMEOUT_S) -> Fetch:
    """Fetch `uri` over HTTPS, trusting the system's CAs and `ca_file`; at most MAX_JWKS_BYTES."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))

    async def fetch() -> bytes:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(uri, ssl=context, headers={"Accept": "application/json"}) as response,
            ):
                if response.status != 200:
                    raise JwksUnavailable(f"{uri} answered HTTP {response.status}")
                body = await response.content.read(MAX_JWKS_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as error:
            raise JwksUnavailable(f"cannot fetch {uri}: {type(error).__name__}: {error}") from None
        if len(body) > MAX_JWKS_BYTES:
            raise JwksUnavailable(f"{uri} answered more than {MAX_JWKS_BYTES} bytes")
        return body

    return fetch


def file_fetch(path: Path) -> Fetch:
    async def fetch() -> bytes:
        try:
            return await asyncio.to_thread(path.read_bytes)
        except OSError as error:
            raise JwksUnavailable(f"cannot read {path}: {error.strerror or error}") from None

    return fetch


class IssuerKeys:
    """One issuer's keys, by key id; `keys_for` waits for a fetch only when it has no key to answer with."""

    def __init__(
        self,
        fetch: Fetch,
        where: str,
        *,
        refresh_s: float = 300.0,
        min_refetch_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.where = where
        self._fetch = fetch
        self._refresh_s = refresh_s
        self._min_refetch_s = min_refetch_s
        self._clock = clock
        self._keys: tuple[PyJWK, ...] = ()
        self._fetched_at: float | None = None
        self._tried_at = float("-inf")
        self._running: asyncio.Task[None] | None = None

    @property
    def keys(self) -> tuple[PyJWK, ...]:
        return self._keys

    async def keys_for(self, kid: str | None) -> Sequence[PyJWK]:
        """The keys a token naming `kid` may be signed with (every key when it names none)."""
        now = self._clock()
        if (self._fetched_at is None or not _matching(self._keys, kid)) and self._may_refetch(now):
            await self.refresh()  # none yet, or a kid not seen: at most once per min_refetch_s, however many ask
        elif self._fetched_at is not None and now - self._fetched_at >= self._refresh_s and self._may_refetch(now):
            self._start_refresh()  # stale: refreshed behind this request, which uses the keys held
        return _matching(self._keys, kid)

    async def refresh(self) -> None:
        """Fetch now (joining a fetch already under way); on failure keep the keys held."""
        self._start_refresh()
        assert self._running is not None
        await asyncio.shield(self._running)

    def _may_refetch(self, now: float) -> bool:
        return now - self._tried_at >= self._min_refetch_s

    def _start_refresh(self) -> None:
        if self._running is None or self._running.done():
            self._tried_at = self._clock()
            self._running = asyncio.get_running_loop().create_task(self._refresh(), name=f"jwks:{self.where}")

    async def _refresh(self) -> None:
        try:
            keys = parse_jwks(await self._fetch(), self.where)
        except JwksUnavailable as error:
            log.warning("keeping %d keys of %s: %s", len(self._keys), self.where, error)
            return
        if {k.key_id for k in keys} != {k.key_id for k in self._keys}:
            log.info("keys of %s: %s", self.where, ", ".join(str(k.key_id) for k in keys) or "none")
        self._keys, self._fetched_at = keys, self._clock()

    async def close(self) -> None:
        task, self._running = self._running, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _matching(keys: Sequence[PyJWK], kid: str | None) -> list[PyJWK]:
    return [key for key in keys if kid is None or key.key_id == kid]
