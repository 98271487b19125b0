"""ConsulWatch: one loop of Consul blocking queries per upstream, turning its passing instances into EndpointSets.

It follows Consul's rules for blocking-query clients (reset an index that goes backwards, never send 0 once
blocking, rate-limit the loop so a churning service cannot spin it) and keeps the last good set while Consul
is unreachable: stale endpoints beat no endpoints. Upstream turns each new set into a new Picker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from meshlet.discovery.consul_client import ConsulClient, ConsulFactory, go_duration
from meshlet.endpoints import Endpoint, EndpointSet
from meshlet.events import DiscoveryFailed, EventBus

log = logging.getLogger(__name__)


class ConsulWatch:
    """Follows ``/v1/health/service/<service>?passing`` and calls `on_update` with each changed EndpointSet.

    `consul` is a factory (built inside the loop at `start`, closed at `stop`) or a client the caller owns.
    On failure the loop emits DiscoveryFailed, keeps `endpoints` as they were and retries with jittered
    exponential backoff from `backoff_base_s` to `backoff_max_s`; it never raises. Successful polls are silent.
    Rate limit: a token bucket of `burst` queries refilled at `rate_per_s` (Consul's docs suggest a small
    burst), so changes arrive at once but a service that churns costs at most `rate_per_s` queries a second.
    """

    def __init__(
        self,
        service: str,
        *,
        consul: ConsulFactory | ConsulClient,
        on_update: Callable[[EndpointSet], None],
        events: EventBus,
        rng: random.Random,
        tags: frozenset[str] = frozenset(),
        wait_s: float = 30.0,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 5.0,
        rate_per_s: float = 1.0,
        burst: int = 2,
    ) -> None:
        self.service = service
        self.tags = tags
        self.endpoints = EndpointSet()
        self.index = 0
        self._source = consul
        self._on_update = on_update
        self._events = events
        self._rng = rng
        self._wait = go_duration(wait_s)
        self._timeout_s = wait_s + wait_s / 16 + 5.0  # Consul adds up to wait/16 of jitter to the wait
        self._backoff = (backoff_base_s, backoff_max_s)
        self._rate = (rate_per_s, float(burst))
        self._tokens = float(burst)
        self._refilled_at = time.monotonic()
        self._failures = 0
        self._fingerprint: tuple[object, ...] = ()
        self._answered = asyncio.Event()
        self._client: ConsulClient | None = None
        self._owns_client = False
        self._task: asyncio.Task[None] | None = None

    @property
    def has_answered(self) -> bool:
        """True once Consul has answered at least once (an empty answer counts: the service has no instance)."""
        return self._answered.is_set()

    async def wait_first_answer(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the first answer; False if none came (Consul unreachable or slow)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._answered.wait()
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        if self._task is not None:
            return
        self._owns_client = callable(self._source)
        self._client = self._source() if self._owns_client else self._source
        self._task = asyncio.create_task(self._run(), name=f"consul-watch:{self.service}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            with contextlib.suppress(Exception):
                await client.close()

    async def _run(self) -> None:
        while True:
            await self._pace()
            try:
                async with asyncio.timeout(self._timeout_s):
                    index, nodes = await self._query()
                self._accept(index, nodes)
            except Exception as exc:  # stale beats down: whatever went wrong, keep the last set and retry
                await asyncio.sleep(self._failed(exc))

    async def _query(self) -> tuple[Any, Any]:
        assert self._client is not None
        answer: tuple[Any, Any] = await self._client.health.service(
            self.service, index=self.index, wait=self._wait, passing=True, tag=sorted(self.tags) or None
        )
        return answer

    def _accept(self, index: Any, nodes: Any) -> None:
        if nodes is None:
            raise LookupError(f"Consul answered 404 for /v1/health/service/{self.service}")
        fresh = endpoints_from_health(nodes)
        new_index = int(index)
        # Consul's rules: an index that went backwards (snapshot restore, a new agent) restarts the watch with
        # a non-blocking query; otherwise keep it >= 1 so the next query blocks.
        self.index = 0 if new_index < self.index else max(new_index, 1)
        if self._failures:
            log.info("discovery of %s recovered after %d failed queries", self.service, self._failures)
            self._failures = 0
        fingerprint = _fingerprint(fresh)
        if fingerprint != self._fingerprint or not self._answered.is_set():
            self.endpoints, self._fingerprint = fresh, fingerprint
            self._announce(fresh)
        self._answered.set()

    def _announce(self, fresh: EndpointSet) -> None:
        """Hand the new set on; the upstream, which applies its tag subset, reports EndpointsChanged."""
        try:
            self._on_update(fresh)
        except Exception:
            log.exception("on_update for %s failed; the watch goes on", self.service)

    def _failed(self, exc: BaseException) -> float:
        """Record a failed query; return how long to wait before the next one."""
        self._failures += 1
        self.index = 0  # the agent that answers next may be a new one whose index is lower than ours
        base_s, max_s = self._backoff
        cap = min(max_s, base_s * 2 ** min(self._failures - 1, 32))
        delay = self._rng.uniform(cap / 2, cap)
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._events.emit(DiscoveryFailed(self.service, error, delay))
        if self._failures == 1:
            log.warning(
                "discovery of %s failed, keeping its %d last known endpoints: %s",
                self.service,
                len(self.endpoints),
                error,
            )
        return delay

    async def _pace(self) -> None:
        rate, burst = self._rate
        now = time.monotonic()
        self._tokens = min(burst, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        if self._tokens < 1.0:
            await asyncio.sleep((1.0 - self._tokens) / rate)
            self._tokens, self._refilled_at = 1.0, time.monotonic()
        self._tokens -= 1.0

    def __repr__(self) -> str:
        state = f"{len(self.endpoints)} endpoints" if self.has_answered else "no answer yet"
        failing = f", failing ({self._failures} in a row)" if self._failures else ""
        return f"<ConsulWatch {self.service}: {state}, index {self.index}{failing}>"


def endpoints_from_health(nodes: Iterable[Mapping[str, Any]]) -> EndpointSet:
    """Endpoints from ``/v1/health/service`` entries (CheckServiceNode): the service's address, else its
    node's; Weights.Passing as the weight. Instances without a port cannot be dialled and are left out."""
    found = []
    for node in nodes:
        service = node["Service"]
        port = service.get("Port") or 0  # omitted when 0
        if not port:
            continue
        found.append(
            Endpoint(
                address=service.get("Address") or node["Node"]["Address"],
                port=int(port),
                weight=max(1, int((service.get("Weights") or {}).get("Passing", 1))),
                tags=frozenset(service.get("Tags") or ()),
                meta=dict(service.get("Meta") or {}),
                instance_id=service.get("ID", ""),
            )
        )
    return EndpointSet(found)


def _fingerprint(endpoints: EndpointSet) -> tuple[object, ...]:
    """What makes two answers different for a caller: addresses, weights and tags, and also ids and meta."""
    return tuple((e, e.instance_id, tuple(sorted(e.meta.items()))) for e in endpoints)
