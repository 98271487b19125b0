"""The edge's rate limits and quotas (``edge.plans``, ``edge.limits``): each request that found its route is charged
to its consumer (meshlet_edge.limits.consumer) on the consumer's plan, after auth and before the cache and the
upstream call. Allowed: the answer carries the RateLimit header fields. Refused: 429 RESOURCE_EXHAUSTED with a
QuotaFailure naming the plan and the window, RetryInfo and ``Retry-After``.

When the store fails or does not answer within ``edge.limits.timeout``: ``on_store_error: open`` lets the request
through, ``closed`` answers 503 UNAVAILABLE with ``Retry-After: 1`` (the caller did nothing wrong; the edge
cannot tell whether it may pass). Either way counted (``meshlet_edge_limit_decisions_total``) and logged at most
once every ten seconds; the Redis client reconnects by itself on a later request.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol

import grpc
from aiohttp import web
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from prometheus_client.core import CounterMetricFamily, Metric

from meshlet.config.schema import EdgeConfig, EdgePlan
from meshlet.errors import ConfigError
from meshlet_edge import caller
from meshlet_edge.limits.consumer import client_address, consumer_of, networks
from meshlet_edge.limits.decision import (
    WINDOWS,
    Outcome,
    Plan,
    Quota,
    describe,
    headers,
    retry_after_s,
    standings,
)
from meshlet_edge.limits.memory_store import MemoryStore
from meshlet_edge.request_patterns import parse_patterns
from meshlet_edge.responses import error_answer
from meshlet_edge.stages import Handler, HttpStage

log = logging.getLogger("meshlet.edge.limits")

DECISIONS = ("allowed", "refused", "store_error_open", "store_error_closed")
LOG_EVERY_S = 10.0
MAX_REFUSING = 10_000  # addresses refused without asking the store; past it the oldest asks again
UNKNOWN_PLANS_LOGGED = 100  # names logged once each; past this many (a claim run wild) they are not logged at all

_HEADERS: ContextVar[dict[str, str] | None] = ContextVar("meshlet_edge_limit_headers", default=None)


class Store(Protocol):
    where: str

    async def charge(self, consumer: str, plan: Plan, cost: int, now: float) -> Outcome: ...
    async def plan_of(self, consumer: str) -> str | None: ...
    async def close(self) -> None: ...


def plan_of(name: str, config: EdgePlan) -> Plan:
    quotas = tuple(
        Quota(window, limit) for window in WINDOWS if (limit := getattr(config, f"per_{window}")) is not None
    )
    burst = config.burst or (max(1, math.ceil(config.rate_per_s)) if config.rate_per_s else 0)
    return Plan(name, config.rate_per_s, burst, quotas)


def _store(url: str, timeout_s: float) -> tuple[Store, tuple[type[BaseException], ...]]:
    """The configured store and the errors that mean it failed (rather than a bug of ours)."""
    if url == "memory":
        return MemoryStore(), ()
    try:
        from redis.exceptions import RedisError
    except ImportError:
        needs = "a Redis store needs redis-py: pip install 'meshlet[edge-redis]' (or use memory)"
        raise ConfigError("edge.limits.store", url, needs) from None

    from meshlet_edge.limits.redis_store import RedisStore

    return RedisStore(url, timeout_s), (RedisError, OSError)


class Limits:
    def __init__(self, edge: EdgeConfig, clock: Callable[[], float] = time.time) -> None:
        self.plans = {name: plan_of(name, plan) for name, plan in edge.plans.items()}
        limits = edge.limits
        self.store, store_errors = _store(limits.store, limits.timeout)
        self._store_errors: tuple[type[BaseException], ...] = (TimeoutError, *store_errors)
        self.closed = limits.on_store_error == "closed"
        self.timeout_s = limits.timeout
        self.trusted = networks(limits.trusted_proxies)
        patterns = parse_patterns([route.match for route in limits.routes], "edge.limits.routes")
        self.costs = tuple(zip(patterns, (route.cost for route in limits.routes), strict=True))
        self._clock = clock
        failed = limits.failed_credentials
        self.failures = plan_of("failed_credentials", failed) if failed is not None else None
        # an address out of failures -> when it may fail again, and the limit it spent
        self._refusing: dict[str, tuple[float, str]] = {}
        self._decisions: dict[tuple[str, str], int] = {}
        self._last_logged = -math.inf
        self._unlogged = 0
        self._unknown_plans: set[str] = set()

    def plan(self, name: str | None) -> Plan:
        """The named plan, or `default` (also for a name no plan has: a key made for a plan since removed, or a
        token's plan claim naming one this edge does not define), each such name logged once."""
        found = self.plans.get(name or "default")
        if found is not None:
            return found
        if name not in self._unknown_plans and len(self._unknown_plans) < UNKNOWN_PLANS_LOGGED:
            self._unknown_plans.add(str(name))
            log.warning(
                "no plan %r in edge.plans: its callers are on the default plan (define it, or fix the name)", name
            )
        return self.plans["default"]

    def cost(self, verb: str, raw_path: str, method: str) -> int:
        for pattern, cost in self.costs:
            if pattern.matches(verb, raw_path, method):
                return cost
        return 1

    # ------------------------------------------------------------------ requests

    def middleware(self) -> HttpStage:
        """Scopes the decision's headers to one request (a kept-alive connection serves several in one task). Not
        reset on the way out: the answer is prepared, and its headers added, after the stages return."""

        async def scoped(request: web.Request, handler: Handler) -> web.StreamResponse:
            _HEADERS.set(None)
            return await handler(request)

        return scoped

    def failed_credentials(self) -> HttpStage:
        """The stage before auth: a 401 is charged to the client's address (`failures`, a plan of its own); an
        address that has spent it is refused until it refills, in this process without asking the store, and its
        credential is not checked. Its requests that pass auth cost nothing here."""
        plan = self.failures
        assert plan is not None

        def address_of(request: web.Request) -> str:
            client = client_address(request.remote, request.headers.getall("X-Forwarded-For", []), self.trusted)
            return "failed-credentials:" + consumer_of(None, client)[0]

        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            consumer = address_of(request) if self._refusing else None  # none refused: nothing to look up
            if consumer is not None and (refusing := self._refusing.get(consumer)) is not None:
                until, spent = refusing
                if self._clock() < until:
                    self._count(plan.name, "refused")
                    return _refused(consumer, plan, spent, until - self._clock())
                del self._refusing[consumer]
            response = await handler(request)
            if response.status != 401:
                return response  # a request that passed auth costs nothing here
            consumer = consumer or address_of(request)
            now = self._clock()
            try:
                async with asyncio.timeout(self.timeout_s):
                    outcome = await self.store.charge(consumer, plan, 1, now)
            except self._store_errors as error:
                self._store_failed(plan, error)
                return response  # the 401 stands: a failing store never lets a credential through
            if outcome.refused_by is None:
                self._count(plan.name, "allowed")
                return response
            wait_s = retry_after_s(plan, outcome, 1, now)
            if len(self._refusing) >= MAX_REFUSING:
                self._refusing.pop(next(iter(self._refusing)))  # the oldest: it asks the store again, no more
            self._refusing[consumer] = (now + wait_s, outcome.refused_by)
            self._count(plan.name, "refused")
            return _refused(consumer, plan, outcome.refused_by, wait_s)

        return guard

    def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """A header hook: the decision's RateLimit fields on whatever answer the request gets."""
        found = _HEADERS.get()
        if found:
            response.headers.update(found)

    async def admit(self, request: web.Request, method: str) -> web.Response | None:
        """None when the request may go on, else the answer that refuses it."""
        cost = self.cost(request.method, request.rel_url.raw_path, method)
        if cost == 0:
            return None
        client = client_address(request.remote, request.headers.getall("X-Forwarded-For", []), self.trusted)
        consumer, named = consumer_of(caller.current.get(), client)
        plan = self.plan(named)
        if plan.rate_per_s is None and not plan.quotas:
            return None  # a plan without limits
        now = self._clock()
        try:
            async with asyncio.timeout(self.timeout_s):
                outcome = await self.store.charge(consumer, plan, cost, now)
        except self._store_errors as error:
            return self._store_failed(plan, error)
        _HEADERS.set(headers(plan, outcome, now))
        if outcome.refused_by is None:
            self._count(plan.name, "allowed")
            return None
        self._count(plan.name, "refused")
        wait_s = retry_after_s(plan, outcome, cost, now)
        return _refused(consumer, plan, outcome.refused_by, wait_s)

    def _store_failed(self, plan: Plan, error: BaseException) -> web.Response | None:
        decision = "store_error_closed" if self.closed else "store_error_open"
        self._count(plan.name, decision)
        what = (
            "did not answer in time" if isinstance(error, TimeoutError) else f"failed ({error or type(error).__name__})"
        )
        now = time.monotonic()
        if now - self._last_logged >= LOG_EVERY_S:
            since = f" ({self._unlogged} more failures since the last report)" if self._unlogged else ""
            action = "refusing requests (503)" if self.closed else "letting requests through unlimited"
            log.warning(
                "rate-limit store %s %s: %s, as edge.limits.on_store_error says%s",
                self.store.where,
                what,
                action,
                since,
            )
            self._last_logged, self._unlogged = now, 0
        else:
            self._unlogged += 1
        if not self.closed:
            return None
        message = f"the edge's rate-limit store {what}, and edge.limits.on_store_error is closed: retry shortly"
        status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message=message)
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))
        return error_answer(status, 503, {"Retry-After": "1"})

    def _count(self, plan: str, decision: str) -> None:
        key = (plan, decision)
        self._decisions[key] = self._decisions.get(key, 0) + 1

    # ------------------------------------------------------------------ admin

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "meshlet_edge_limit_decisions",
            "Rate-limit decisions by plan and outcome (store_error_*: the store failed and on_store_error decided)",
            labels=["plan", "decision"],
        )
        for (plan, decision), count in sorted(self._decisions.items()):
            family.add_metric([plan, decision], count)
        yield family

    async def usage(self, consumer: str) -> dict[str, Any]:
        """A consumer's standing, charged nothing: its plan, its bucket, and each window's used/limit/reset."""
        async with asyncio.timeout(max(self.timeout_s, 1.0)):
            plan = self.plan(await self.store.plan_of(consumer))
            now = self._clock()
            outcome = await self.store.charge(consumer, plan, 0, now)
        found = {s.name: s for s in standings(plan, outcome, now)}
        bucket = None
        if plan.rate_per_s is not None and outcome.tokens is not None:
            bucket = {
                "tokens": round(outcome.tokens, 3),
                "burst": plan.burst,
                "rate_per_s": plan.rate_per_s,
                "full_in_s": round(found["rate"].reset_s, 3),
            }
        windows = [
            {
                "window": quota.window,
                "used": used,
                "limit": quota.limit,
                "remaining": max(0, quota.limit - used),
                "reset": _iso(now + found[quota.window].reset_s),
                "reset_in_s": round(found[quota.window].reset_s, 3),
            }
            for quota, used in zip(plan.quotas, outcome.used, strict=True)
        ]
        return {
            "consumer": consumer,
            "plan": plan.name,
            "store": self.store.where,
            "bucket": bucket,
            "windows": windows,
        }

    async def close(self) -> None:
        await self.store.close()


def _iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(round(moment), datetime.UTC).isoformat().replace("+00:00", "Z")


def _refused(consumer: str, plan: Plan, refused_by: str, wait_s: float) -> web.Response:
    """429 RESOURCE_EXHAUSTED: a QuotaFailure naming the consumer, its plan and the window, and when to retry."""
    retry = max(1, math.ceil(wait_s))
    limit = describe(plan, refused_by)
    message = f"rate limit reached for {consumer}: {limit}; retry in {retry}s"
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message=message)
    violation = error_details_pb2.QuotaFailure.Violation(subject=consumer, description=limit)
    if "quota_id" in violation.DESCRIPTOR.fields_by_name:  # newer googleapis-common-protos have these fields
        violation.quota_id = f"{plan.name}/{refused_by}"
        violation.quota_value = next((q.limit for q in plan.quotas if q.window == refused_by), plan.burst)
    status.details.add().Pack(error_details_pb2.QuotaFailure(violations=[violation]))
    delay = duration_pb2.Duration()
    delay.FromTimedelta(datetime.timedelta(seconds=retry))
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return error_answer(status, 429, {"Retry-After": str(retry)})
