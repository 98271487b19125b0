"""The dev agent's own ``/metrics``: the HTTP requests it answered by route and status, the blocking queries it
holds, its index, and the process's own numbers, on a registry of its own (one process may run several agents,
as tests do). Counted by a middleware, off the handlers. Like the rest of the dev agent it uses nothing of
meshlet's (test_layering: an island), so the few lines telemetry/metrics.py has for the same are here again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

UNMATCHED = "(unmatched)"  # a path no route serves: never the path itself, which any client can invent

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AgentMetrics:
    """The families; `blocking` and `index` are read at scrape time from the agent."""

    def __init__(self, blocking: Callable[[], int], index: Callable[[], int]) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "meshlet_devagent_http_requests",
            "HTTP requests the dev agent answered, by route (its pattern, e.g. /v1/health/service/{name}), "
            "HTTP method and status code",
            ["route", "method", "code"],
            registry=registry,
        )
        registry.register(_AgentState(blocking, index))
        disable_created_metrics()  # type: ignore[no-untyped-call]
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        pattern = route.canonical if route is not None else UNMATCHED
        try:
            response = await handler(request)
        except web.HTTPException as answered:
            self.requests.labels(pattern, request.method, str(answered.status)).inc()
            raise
        except BaseException:
            self.requests.labels(pattern, request.method, "500").inc()
            raise
        self.requests.labels(pattern, request.method, str(response.status)).inc()
        return response

    async def page(self, request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "")
        if "application/openmetrics-text" in accept:
            encode, content_type = choose_encoder(accept)
            return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


class _AgentState(Collector):
    def __init__(self, blocking: Callable[[], int], index: Callable[[], int]) -> None:
        self._blocking = blocking
        self._index = index

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "meshlet_devagent_blocking_queries",
            "Blocking queries (?index=, hash-blocking) the dev agent holds open now",
            value=self._blocking(),
        )
        yield GaugeMetricFamily(
            "meshlet_devagent_index", "The dev agent's current Raft-style index (X-Consul-Index)", value=self._index()
        )
