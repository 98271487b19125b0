"""Prometheus metrics for one Mesh or one sidecar: the families, on a registry of their own (never the global
one, so one process can hold many meshes, as tests do).

Three kinds of numbers, kept three ways:

- what happens on every call (requests, durations, attempts) is added up by the observe stages in plain ints
  and floats on a `MethodMetrics` resolved once per method, and turned into Prometheus families only when
  scraped (`CallsCollector`). prometheus_client's own Counter and Histogram take a lock per update, which costs
  ten times as much (measured: 5.5 us against 0.6 us per call for a count and a duration); the pipelines run on
  the event loop's one thread, and so does the scrape, so the plain numbers need no lock;
- what is state (breaker state, endpoints by state, calls in flight) is read at scrape time from the upstreams'
  `describe()` by `StateCollector`, so the data path maintains nothing for it;
- what the pipelines decide rarely (retries, budget refusals, breaker transitions, refusals) is counted with
  prometheus_client's Counter, from the EventBus or the stage that refused.

Every registry also carries the process's own numbers (``process_*``, ``python_*``) and ``meshlet_build_info``;
a scraper that asks for OpenMetrics gets it, with the trace id of a sampled call as the exemplar of the latency
bucket it fell in.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample

from meshlet.errors import ErrorReason
from meshlet.events import (
    BreakerClosed,
    BreakerHalfOpened,
    BreakerOpened,
    BudgetRefused,
    EndpointsChanged,
    Event,
    EventBus,
    RetryNotAttempted,
    RetryScheduled,
)
from meshlet.telemetry.build import build_labels
from meshlet.telemetry.method_names import UNKNOWN_METHOD, MethodNames

# RPC latency from a loopback hop (sub-millisecond) to a slow upstream near the default 5 s timeout.
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BUCKET_LABELS = (*(repr(float(bound)) for bound in BUCKETS_S), "+Inf")  # the le label values, as Prometheus writes them
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
MAX_CALLERS = 256  # per service: callers are the services in the mesh, but a cap keeps a label bounded anyway
MAX_METHODS = 512  # per direction and service: method paths come from callers, so their label values are capped
OTHER_METHOD = "(other)"
UNIDENTIFIED = "(unidentified)"
OTHER_CALLERS = "(other)"
# The reasons each direction's stages refuse a call with (ErrorInfo.reason): their counters start at 0.
REFUSAL_REASONS = {
    "outbound": (
        ErrorReason.NO_HEALTHY_ENDPOINT,
        ErrorReason.BREAKER_OPEN,
        ErrorReason.BUDGET_EXHAUSTED,
        ErrorReason.DEADLINE_TOO_SHORT,
        ErrorReason.BULKHEAD_FULL,
        ErrorReason.CHANNEL_CLOSED,
    ),
    "inbound": (ErrorReason.UNAUTHENTICATED, ErrorReason.INTENTION_DENIED, ErrorReason.RATE_LIMITED),
}
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text exposition 0.0.4


def add_process_collectors(registry: CollectorRegistry) -> None:
    """``process_*`` (CPU, memory, open files), ``python_*`` (version, GC) and ``meshlet_build_info`` on a
    registry of meshlet's own, as on the global one; counters without ``*_created`` series (the scrape time of
    a counter's first sample is no use to a rate, and doubles the series)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info("meshlet_build", "The meshlet build this process runs", registry=registry).info(build_labels())


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper's Accept header asks for: OpenMetrics (with exemplars) when it
    names ``application/openmetrics-text``, else Prometheus text 0.0.4; and the content type to send."""
    if accept and "application/openmetrics-text" in accept:
        encode, content_type = choose_encoder(accept)
        return encode(registry), content_type
    return generate_latest(registry), TEXT_CONTENT_TYPE


class Describes(Protocol):
    """What the state collector needs of an upstream: meshlet.upstream.Upstream is one."""

    def describe(self) -> dict[str, Any]: ...


def method_label(path: str) -> str:
    """``/pkg.Service/Method`` -> ``pkg.Service/Method``, the span name of the same call."""
    return path[1:] if path.startswith("/") else path


class MethodMetrics:
    """One (direction, service, method)'s numbers: calls (inbound: by caller too) and attempts by status, and the
    duration histogram, whose buckets each keep the last sampled call's trace id as their exemplar."""

    __slots__ = ("attempts", "buckets", "by_caller", "exemplars", "label", "requests", "sum_s")

    def __init__(self, label: str) -> None:
        self.label = label
        self.requests: dict[str, int] = {}  # status name -> calls (outbound, or inbound without a caller given)
        self.by_caller: dict[str, dict[str, int]] = {}  # caller label -> status name -> calls (inbound)
        self.attempts: dict[str, int] = {}  # status name -> attempts (outbound)
        self.buckets = [0] * (len(BUCKETS_S) + 1)  # per bucket, not cumulative; the last is +Inf
        self.exemplars: list[tuple[int, float] | None] = [None] * (len(BUCKETS_S) + 1)  # (trace id, duration)
        self.sum_s = 0.0

    def request(self, code: str, duration_s: float, trace_id: int | None = None, caller: str | None = None) -> None:
        if caller is None:
            requests = self.requests
        else:
            requests = self.by_caller.get(caller) or self.by_caller.setdefault(caller, {})
        requests[code] = requests.get(code, 0) + 1
        bucket = bisect_left(BUCKETS_S, duration_s)  # the first bound >= the duration: Prometheus' le
        self.buckets[bucket] += 1
        self.sum_s += duration_s
        if trace_id is not None:  # a sampled call: its trace is there to open from the latency panel
            self.exemplars[bucket] = (trace_id, duration_s)  # formatted only when scraped

    def attempt(self, code: str) -> None:
        attempts = self.attempts
        attempts[code] = attempts.get(code, 0) + 1


class CallMetrics:
    """One direction and service: its methods' children, and (inbound) the calls in flight, a plain int that the
    observe stage counts and the state collector reads at scrape time. Only methods that exist get a child of
    their own (`names`, see method_names.py); invented paths share ``(unknown)``."""

    __slots__ = ("_methods", "_other", "_unknown", "direction", "in_flight", "names", "service")

    def __init__(self, direction: str, service: str, names: MethodNames | None = None) -> None:
        self.direction = direction
        self.service = service
        self.names = names if names is not None else MethodNames()
        self.in_flight = 0
        self._methods: dict[str, MethodMetrics] = {}
        self._other: MethodMetrics | None = None
        self._unknown: MethodMetrics | None = None

    def method(self, path: str, answered: bool = True) -> MethodMetrics:
        """`path`'s child; `answered`: the call (or attempt) ended with an answer that proves the method exists."""
        found = self._methods.get(path)
        if found is None:
            if not self.names.named(path, answered):
                if self._unknown is None:
                    self._unknown = MethodMetrics(UNKNOWN_METHOD)
                return self._unknown
            if len(self._methods) >= MAX_METHODS:  # a backstop: the registry never grows without end
                if self._other is None:
                    self._other = MethodMetrics(OTHER_METHOD)
                return self._other
            found = self._methods[path] = MethodMetrics(method_label(path))
        return found

    def methods(self) -> list[MethodMetrics]:
        return [*self._methods.values(), *(shared for shared in (self._other, self._unknown) if shared is not None)]


class Metrics:
    """Every meshlet metric family of one Mesh or sidecar, on `registry`; `render()` is the /metrics page."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        self.retries = Counter(
            "meshlet_retries", "Outbound attempts scheduled as retries", ["service", "method"], registry=registry
        )
        self.budget_refusals = Counter(
            "meshlet_retry_budget_refusals",
            "Retries the retry budget refused (the upstream is failing too much to multiply its load)",
            ["service"],
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "meshlet_breaker_transitions",
            "Endpoint circuit breaker transitions, by the state entered (an endpoint's series go when it leaves "
            "discovery; meshlet_breaker_openings counts every opening of the upstream)",
            ["service", "endpoint", "state"],
            registry=registry,
        )
        self.breaker_openings = Counter(
            "meshlet_breaker_openings",
            "Endpoint circuit breakers opened, per upstream: kept while the process lives, whatever endpoints leave",
            ["service"],
            registry=registry,
        )
        self.authz_denials = Counter(
            "meshlet_authz_denials",
            "Inbound calls an intention denied, by the caller's service",
            ["service", "caller"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "meshlet_rate_limited",
            "Inbound calls refused by a rate limit, by the caller's service",
            ["service", "caller"],
            registry=registry,
        )
        self.l4_connections = Counter(
            "meshlet_l4_connections",
            "Inbound connections a sidecar's L4 hop authorized once each, by the caller's service and outcome "
            "(denied: its calls answered by the mesh, never reaching the app)",
            ["service", "caller", "outcome"],
            registry=registry,
        )
        self.refusals = Counter(
            "meshlet_refusals",
            "Calls the mesh itself refused or gave up on, by direction, service (outbound: the upstream) and "
            "meshlet reason (the ErrorInfo reason the caller reads)",
            ["direction", "service", "reason"],
            registry=registry,
        )
        self.tls_handshake_failures = Counter(
            "meshlet_tls_handshake_failures",
            "Attempts that failed in the TLS handshake (outbound only: grpcio does not show a server's failed "
            "handshakes to Python)",
            ["direction", "service"],
            registry=registry,
        )
        self._calls: dict[tuple[str, str], CallMetrics] = {}
        self._upstreams: Callable[[], Iterable[Describes]] = tuple
        registry.register(CallsCollector(self))
        registry.register(StateCollector(self))
        add_process_collectors(registry)

    def calls(self, direction: str, service: str, names: MethodNames | None = None) -> CallMetrics:
        """The per-call handle of one direction and service; built once, kept by the stage that uses it. `names`
        (the pipeline's, shared with its span stages) says which methods go by their name."""
        key = (direction, service)
        found = self._calls.get(key)
        if found is None:
            found = self._calls[key] = CallMetrics(direction, service, names)
            if direction == "outbound":
                self._upstream_known(service)
        elif names is not None:
            found.names = names
        return found

    def _upstream_known(self, service: str) -> None:
        """The upstream's counters at 0 from the moment its pipeline exists, not from its first event: a series
        that appears with the value 1 hides that first burst from ``increase()`` and ``rate()``."""
        self.budget_refusals.labels(service)
        self.breaker_openings.labels(service)
        self.tls_handshake_failures.labels("outbound", service)

    def refusals_of(self, direction: str, service: str) -> dict[str, Any]:
        """One direction and service's refusal counters by reason, each at 0 from now on: `increase()` sees the
        first refusal. Built once, kept by the stage that refuses or observes."""
        return {reason: self.refusals.labels(direction, service, reason) for reason in REFUSAL_REASONS[direction]}

    def all_calls(self) -> list[CallMetrics]:
        return list(self._calls.values())

    def track_upstreams(self, upstreams: Callable[[], Iterable[Describes]]) -> None:
        """Where the state collector reads breaker states, endpoints and outbound in-flight calls at scrape time."""
        self._upstreams = upstreams

    def upstreams(self) -> Iterable[Describes]:
        return self._upstreams()

    def watch(self, events: EventBus) -> None:
        """Count retries, budget refusals and breaker transitions from the pipelines' events."""
        events.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, RetryScheduled):  # the method through the call metrics' cap: paths come from callers
            method = self.calls("outbound", event.upstream).method(event.method, answered=False)
            self.retries.labels(event.upstream, method.label).inc()
        elif isinstance(event, RetryNotAttempted):
            if event.why == "budget":
                self.budget_refusals.labels(event.upstream).inc()
        elif isinstance(event, BudgetRefused):
            self.budget_refusals.labels(event.upstream).inc()
        elif isinstance(event, BreakerOpened):
            self.breaker_openings.labels(event.upstream).inc()
            self.breaker_transitions.labels(event.upstream, str(event.endpoint), "open").inc()
        elif isinstance(event, BreakerHalfOpened):
            self.breaker_transitions.labels(event.upstream, str(event.endpoint), "half_open").inc()
        elif isinstance(event, BreakerClosed):
            self.breaker_transitions.labels(event.upstream, str(event.endpoint), "closed").inc()
        elif isinstance(event, EndpointsChanged):  # pods come and go: a departed endpoint's series go with it
            # (its openings stay counted in breaker_openings: a total never goes backwards)
            for endpoint in event.removed:
                for state in ("open", "half_open", "closed"):
                    with contextlib.suppress(KeyError):
                        self.breaker_transitions.remove(event.upstream, str(endpoint), state)

    def collect_with(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Publish families built at scrape time by `collect` (what the sidecar alone knows, say)."""
        self.registry.register(_FunctionCollector(collect))

    def counter_from(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Publish a count kept elsewhere (the spans an exporter dropped), read at scrape time."""
        self.collect_with(lambda: [CounterMetricFamily(name, documentation, value=read())])

    def counters_from(self, name: str, documentation: str, label: str, read: Callable[[], dict[str, int]]) -> None:
        """Publish counts kept elsewhere by one `label` (export failures by reason), read at scrape time."""

        def collect() -> list[Metric]:
            family = CounterMetricFamily(name, documentation, labels=[label])
            for value, count in read().items():
                family.add_metric([value], count)
            return [family]

        self.collect_with(collect)

    def render(self) -> bytes:
        """The registry in Prometheus text format (0.0.4)."""
        return generate_latest(self.registry)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The /metrics page in the format `accept` asks for, and its content type (see `exposition`)."""
        return exposition(self.registry, accept)


def caller_label(caller_service: str | None) -> str:
    return caller_service or UNIDENTIFIED


class CallsCollector(Collector):
    """The per-call numbers of every direction, service and method, as Prometheus families."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "meshlet_requests",
            "Calls by direction, service, method and final gRPC status (outbound: one per call, not per attempt; "
            "inbound: also by caller, the service its certificate names, or (unidentified))",
            labels=["direction", "service", "method", "code"],
        )
        duration = HistogramMetricFamily(
            "meshlet_request_duration_seconds",
            "Call duration, from the first stage to the reply (a stream: to its end), retries included",
            labels=["direction", "service", "method"],
        )
        attempts = CounterMetricFamily(
            "meshlet_attempts",
            "Outbound attempts sent to an endpoint, by their gRPC status",
            labels=["service", "method", "code"],
        )
        for calls in self._metrics.all_calls():
            for method in calls.methods():
                labels = [calls.direction, calls.service, method.label]
                for code, count in list(method.requests.items()):
                    requests.add_metric([*labels, code], count)
                for caller, codes in list(method.by_caller.items()):
                    for code, count in list(codes.items()):
                        requests.samples.append(_sample(labels, code, caller, count))
                for code, count in list(method.attempts.items()):
                    attempts.add_metric([calls.service, method.label, code], count)
                cumulative = 0
                buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
                for le, count, exemplar in zip(BUCKET_LABELS, method.buckets, method.exemplars, strict=True):
                    cumulative += count
                    if exemplar is None:
                        buckets.append((le, cumulative))
                    else:
                        buckets.append((le, cumulative, Exemplar({"trace_id": f"{exemplar[0]:032x}"}, exemplar[1])))
                duration.add_metric(labels, buckets, method.sum_s)
        yield from (requests, duration, attempts)


def _sample(labels: list[str], code: str, caller: str, count: int) -> Sample:
    """An inbound request sample with its caller: CounterMetricFamily.add_metric takes only the family's labels."""
    direction, service, method = labels
    names = {"direction": direction, "service": service, "method": method, "code": code, "caller": caller}
    return Sample("meshlet_requests_total", names, count)


class StateCollector(Collector):
    """The gauges that reflect state, read when Prometheus scrapes rather than maintained on every call."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # no fixed samples to check at registration: every sample is built in collect()

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "meshlet_breaker_state",
            "Endpoint circuit breaker state: 0 closed, 1 half-open, 2 open",
            labels=["service", "endpoint"],
        )
        endpoints = GaugeMetricFamily(
            "meshlet_endpoints",
            "Discovered endpoints per upstream: healthy, or ejected by their open breaker",
            labels=["service", "state"],
        )
        in_flight = GaugeMetricFamily(
            "meshlet_in_flight", "Calls in flight, by direction and service", labels=["direction", "service"]
        )
        panic = GaugeMetricFamily(
            "meshlet_upstream_panic",
            "1 while too few endpoints are healthy to balance over them, so the balancer uses all",
            labels=["service"],
        )
        bulkhead = GaugeMetricFamily(
            "meshlet_bulkhead_limit",
            "The most calls an upstream may have in flight (upstreams.NAME.max_in_flight); beyond it the mesh "
            'refuses with BULKHEAD_FULL: compare meshlet_in_flight{direction="outbound"}',
            labels=["service"],
        )
        budget = GaugeMetricFamily(
            "meshlet_retry_budget_remaining",
            "Retries an upstream's retry budget still allows in its window; at 0 failed attempts are not retried",
            labels=["service"],
        )
        for upstream in self._metrics.upstreams():
            described = upstream.describe()
            service = str(described["name"])
            ejected = 0
            listed = described.get("endpoints", ())
            for endpoint in listed:
                breaker = BREAKER_STATES.get(str(endpoint.get("breaker", "closed")), 0)
                state.add_metric([service, str(endpoint["address"])], breaker)
                ejected += bool(endpoint.get("ejected"))
            endpoints.add_metric([service, "healthy"], len(listed) - ejected)
            endpoints.add_metric([service, "ejected"], ejected)
            in_flight.add_metric(["outbound", service], float(described.get("in_flight", 0)))
            panic.add_metric([service], float(bool(described.get("panic"))))
            if "max_in_flight" in described:
                bulkhead.add_metric([service], float(described["max_in_flight"]))
            if "budget_remaining" in described:
                budget.add_metric([service], float(described["budget_remaining"]))
        for calls in self._metrics.all_calls():
            if calls.direction == "inbound":
                in_flight.add_metric(["inbound", calls.service], calls.in_flight)
        yield from (state, endpoints, in_flight, panic, bulkhead, budget)


class _FunctionCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()
