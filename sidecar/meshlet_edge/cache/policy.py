"""A request's path through the edge's cache, after auth and rate limits, before the upstream call:

- a GET that a rule of ``edge.cache.routes`` names is looked up under its key (meshlet_edge.cache.rules): a hit is
  answered from the store (``Cache-Status: meshlet-edge; hit; ttl=N``, ``Age``); a miss goes upstream and a 200 is
  stored for the rule's ``ttl`` (``fwd=miss; stored``);
- concurrent misses for one key make one upstream call: the first starts it as a task of its own (so that its
  client leaving does not cancel it for the others), the rest await that task (``fwd=miss; collapsed``) and get
  its answer, whatever it is: a failure is not stored, but it is shared with those who asked at the same moment
  rather than retried by each, which would multiply the load on an upstream exactly when it fails;
- ``Cache-Control: no-cache``/``no-store`` on the request, a private rule with no authenticated caller (there is
  nobody to keep the entry for), or a store that fails are a bypass (``fwd=bypass``): forwarded, not stored;
- a successful request that a rule's ``invalidate`` names drops all that rule's entries (one generation bump);
- a HEAD is a GET whose body aiohttp leaves out as it writes the answer: it finds the GET's entry (``hit``), and
  its miss goes upstream and is stored exactly as the GET's, body and all, since the edge makes the whole answer
  either way; so no entry without a body can exist for a later GET to find.

A store error never fails a request: it is counted (``meshlet_edge_cache_answers_total{outcome="store_error"}``)
and logged (the first of a run of failures, then at most every 30 s)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import hdrs, web
from multidict import CIMultiDict

from meshlet.config.schema import EdgeCache
from meshlet_edge import caller
from meshlet_edge.cache.rules import (
    CacheRule,
    bypasses,
    cache_key,
    compile_rules,
    forward_status,
    hit_status,
    invalidated,
    rule_for,
)
from meshlet_edge.cache.stores import Entry, MemoryStore, RedisStore, Store
from meshlet_edge.caller import Caller

log = logging.getLogger("meshlet.edge.cache")

CACHE_STATUS = "Cache-Status"
SAFE_VERBS = frozenset({"GET", "HEAD", "OPTIONS"})
LOG_EVERY_S = 30.0
Fetch = Callable[[], Awaitable[web.StreamResponse]]
Identity = Callable[[Caller], Sequence[tuple[str, str]]]


@dataclass(frozen=True)
class Snapshot:
    """An answer as data, so that each collapsed request sends its own copy."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    def response(self) -> web.Response:
        return web.Response(status=self.status, headers=CIMultiDict(self.headers), body=self.body)


class ResponseCache:
    def __init__(
        self,
        config: EdgeCache,
        store: Store | None = None,
        forwarded: Sequence[str] = (),
        identity: Identity | None = None,
    ) -> None:
        self.rules = compile_rules(config.routes, forwarded)  # forwarded: the headers the upstream is sent
        self._identity = identity  # what the upstream is told about a caller (meshlet_edge.auth)
        self.timeout_s = config.timeout
        if store is None and config.store == "memory":
            store = MemoryStore(config.max_bytes)
        self.store = store if store is not None else RedisStore(config.store, config.timeout)
        self.counts: Counter[str] = Counter()
        self._inflight: dict[str, asyncio.Future[tuple[Snapshot, bool]]] = {}
        self._failing_since: float | None = None
        self._logged_at = 0.0

    def rule_for(self, verb: str, raw_path: str, method: str) -> CacheRule | None:
        return rule_for(self.rules, verb, raw_path, method)

    async def serve(self, request: web.Request, rule: CacheRule, fetch: Fetch) -> web.StreamResponse:
        """The answer to a GET (or HEAD) that `rule` caches, from the store or from `fetch` (the upstream call)."""
        if bypasses(request.headers.get(hdrs.CACHE_CONTROL), request.headers.get(hdrs.PRAGMA)):
            return await self._bypass(fetch, rule, "")
        who = caller.current.get()
        subject = None if who is None or who.kind == "anonymous" else self._owner(who)
        if not rule.public and subject is None:
            return await self._bypass(fetch, rule, "no-caller")  # a private entry needs someone to belong to
        vary = [",".join(request.headers.getall(name, ())) for name in rule.vary]
        key = cache_key(rule, request.rel_url.raw_path, request.rel_url.query.items(), vary, subject)
        try:
            if self.store.remote:
                async with asyncio.timeout(self.timeout_s):
                    generation, entry = await self.store.lookup(rule.id, key)
            else:  # no I/O, no timer: the hit path stays short
                generation, entry = await self.store.lookup(rule.id, key)
        except Exception as error:  # Redis refused, timed out, or answered nonsense: the cache steps aside
            self._store_failed(error, "lookup")
            return await self._bypass(fetch, rule, "store-error")
        self._store_answered()
        if entry is not None:
            self.counts["hit"] += 1
            return _hit(entry, rule, time.time())
        flight = f"{rule.id}:{generation}:{key}"
        task = self._inflight.get(flight)
        collapsed = task is not None
        if task is None:
            task = asyncio.ensure_future(self._fetch_and_store(fetch, rule, generation, key))
            self._inflight[flight] = task
            task.add_done_callback(lambda done: self._forget(flight, done))
        snapshot, stored = await asyncio.shield(task)
        self.counts["collapsed" if collapsed else "miss"] += 1
        status = forward_status("miss", stored=stored and not collapsed, collapsed=collapsed)
        return _described(snapshot.response(), rule, status)

    async def after(self, verb: str, raw_path: str, method: str, status: int) -> None:
        """Once a request was answered: a successful write (not GET, HEAD or OPTIONS, which change nothing) that a
        rule's ``invalidate`` names drops that rule's entries."""
        if not 200 <= status < 300 or verb in SAFE_VERBS:
            return
        for rule in invalidated(self.rules, verb, raw_path, method):
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.store.invalidate(rule.id)
            except Exception as error:
                self._store_failed(error, "invalidation")  # the entries then live out their TTL
                continue
            self.counts["invalidation"] += 1
            log.info("%s %s invalidated the cache of %s", verb, raw_path, rule.pattern.source)

    async def close(self) -> None:
        await self.store.close()

    # ------------------------------------------------------------------ inside

    def _owner(self, who: Caller) -> str:
        """Whose a private entry is: the caller by its name (kind and issuer too: a token's sub and a key's owner
        of one name are two callers, as they are two consumers), and what the upstream is told about it, since
        that may change its answer (one subject's two tokens for two tenants are two answers)."""
        told = self._identity(who) if self._identity is not None else ()
        return who.name + "".join(f"\n{key}={value}" for key, value in told)  # values are printable ASCII

    async def _bypass(self, fetch: Fetch, rule: CacheRule, detail: str) -> web.StreamResponse:
        self.counts["bypass"] += 1
        response = await fetch()
        if detail == "no-caller":
            response.headers[CACHE_STATUS] = forward_status("bypass", detail=detail)
            return response
        return _described(response, rule, forward_status("bypass", detail=detail))

    async def _fetch_and_store(self, fetch: Fetch, rule: CacheRule, generation: int, key: str) -> tuple[Snapshot, bool]:
        response = await fetch()
        assert isinstance(response, web.Response), "only unary routes are cached"
        body = response.body if isinstance(response.body, bytes) else b""
        snapshot = Snapshot(response.status, CIMultiDict(response.headers), body)
        if response.status != 200:
            return snapshot, False
        content_type = response.headers.get(hdrs.CONTENT_TYPE, response.content_type)  # its charset too
        entry = Entry(time.time(), rule.ttl_s, response.headers.get(hdrs.ETAG, ""), content_type, body)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.store.put(rule.id, generation, key, entry)
        except Exception as error:
            self._store_failed(error, "store")
            return snapshot, False
        return snapshot, True

    def _forget(self, flight: str, done: asyncio.Future[tuple[Snapshot, bool]]) -> None:
        if self._inflight.get(flight) is done:
            del self._inflight[flight]
        if not done.cancelled():
            done.exception()  # retrieved here: the waiters got it; asyncio need not warn that nobody did

    def _store_failed(self, error: BaseException, doing: str) -> None:
        self.counts["store_error"] += 1
        now = time.monotonic()
        if self._failing_since is None or now - self._logged_at >= LOG_EVERY_S:
            log.warning("the cache store failed (%s: %r): requests bypass the cache until it answers", doing, error)
            self._logged_at = now
        if self._failing_since is None:
            self._failing_since = now

    def _store_answered(self) -> None:
        if self._failing_since is not None:
            log.info("the cache store answers again after %.1fs", time.monotonic() - self._failing_since)
            self._failing_since = None


def _hit(entry: Entry, rule: CacheRule, now: float) -> web.Response:
    age = entry.age(now)
    headers = {hdrs.CONTENT_TYPE: entry.content_type, hdrs.AGE: str(int(age))}
    if entry.etag:
        headers[hdrs.ETAG] = entry.etag
    response = web.Response(body=entry.body, headers=headers)
    _described(response, rule, hit_status(entry.ttl_s - age))
    return response


def _described(response: web.StreamResponse, rule: CacheRule, status: str) -> web.StreamResponse:
    """The headers every answer of a cached route carries: what happened, and (for a 200) how long it keeps."""
    response.headers[CACHE_STATUS] = status
    if response.status == 200:
        response.headers[hdrs.CACHE_CONTROL] = rule.cache_control()
        if rule.vary:
            response.headers[hdrs.VARY] = ", ".join(rule.vary)
    return response
