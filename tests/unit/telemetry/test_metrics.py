"""The metric families as Prometheus parses them, from plain data: per-call numbers, state read at scrape time
from upstreams' `describe()`, and which attempt failures count as TLS handshake failures."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshlet.endpoints import Endpoint
from meshlet.events import BreakerOpened, EndpointsChanged, EventBus, RetryNotAttempted, RetryScheduled
from meshlet.telemetry.method_names import UNKNOWN_METHOD, MethodNames
from meshlet.telemetry.metrics import MAX_METHODS, OTHER_METHOD, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Described:
    def __init__(self, **description: Any) -> None:
        self.description = description

    def describe(self) -> dict[str, Any]:
        return self.description


INVENTORY = Described(
    name="inventory",
    endpoints=[
        {"address": "10.0.0.1:50051", "breaker": "closed", "ejected": False},
        {"address": "10.0.0.2:50051", "breaker": "open", "ejected": True},
        {"address": "10.0.0.3:50051", "breaker": "half_open", "ejected": False},
    ],
    panic=False,
    in_flight=3,
)


def test_breaker_state_endpoints_and_in_flight_are_read_from_the_upstreams_when_scraped() -> None:
    metrics = Metrics()
    metrics.track_upstreams(lambda: [INVENTORY])

    seen = samples(metrics)

    def value(name: str, **labels: str) -> float:
        return seen[(name, frozenset(labels.items()))]

    assert value("meshlet_breaker_state", service="inventory", endpoint="10.0.0.1:50051") == 0
    assert value("meshlet_breaker_state", service="inventory", endpoint="10.0.0.2:50051") == 2
    assert value("meshlet_breaker_state", service="inventory", endpoint="10.0.0.3:50051") == 1
    assert value("meshlet_endpoints", service="inventory", state="healthy") == 2
    assert value("meshlet_endpoints", service="inventory", state="ejected") == 1
    assert value("meshlet_in_flight", direction="outbound", service="inventory") == 3
    assert value("meshlet_upstream_panic", service="inventory") == 0


def test_durations_land_in_cumulative_buckets_by_their_upper_bound() -> None:
    metrics = Metrics()
    method = metrics.calls("inbound", "orders").method("/shop.orders.v1.Orders/Create")
    for duration_s in (0.0004, 0.0005, 0.003, 42.0):
        method.request("OK", duration_s)

    seen = samples(metrics)
    labels = {"direction": "inbound", "service": "orders", "method": "shop.orders.v1.Orders/Create"}

    def bucket(le: str) -> float:
        return seen[("meshlet_request_duration_seconds_bucket", frozenset({**labels, "le": le}.items()))]

    assert (bucket("0.0005"), bucket("0.001"), bucket("0.005"), bucket("10.0"), bucket("+Inf")) == (2, 2, 3, 3, 4)
    assert seen[("meshlet_request_duration_seconds_count", frozenset(labels.items()))] == 4
    assert seen[("meshlet_request_duration_seconds_sum", frozenset(labels.items()))] == pytest.approx(42.0039)
    assert seen[("meshlet_requests_total", frozenset({**labels, "code": "OK"}.items()))] == 4


def test_retries_budget_refusals_and_transitions_come_from_the_events() -> None:
    metrics = Metrics()
    bus = EventBus()
    metrics.watch(bus)
    endpoint = Endpoint("10.0.0.2", 50051)

    bus.emit(RetryScheduled("inventory", "/shop.inventory.v1.Inventory/Reserve", 1, 0.02, "UNAVAILABLE"))
    bus.emit(RetryNotAttempted("inventory", "/shop.inventory.v1.Inventory/Reserve", 2, "UNAVAILABLE", "budget"))
    bus.emit(RetryNotAttempted("inventory", "/shop.inventory.v1.Inventory/Reserve", 1, "UNAVAILABLE", "max_attempts"))
    bus.emit(BreakerOpened("inventory", endpoint, 10.0))
    seen = samples(metrics)

    retries = {"service": "inventory", "method": "shop.inventory.v1.Inventory/Reserve"}
    assert seen[("meshlet_retries_total", frozenset(retries.items()))] == 1
    assert seen[("meshlet_retry_budget_refusals_total", frozenset({"service": "inventory"}.items()))] == 1
    opened = {"service": "inventory", "endpoint": "10.0.0.2:50051", "state": "open"}
    assert seen[("meshlet_breaker_transitions_total", frozenset(opened.items()))] == 1


def test_a_count_kept_elsewhere_is_read_when_scraped() -> None:
    metrics = Metrics()
    dropped = [0]
    metrics.counter_from("meshlet_spans_dropped", "spans dropped", lambda: dropped[0])
    dropped[0] = 7

    assert samples(metrics)[("meshlet_spans_dropped_total", frozenset())] == 7


def test_two_meshes_in_one_process_keep_separate_registries() -> None:
    first, second = Metrics(), Metrics()
    first.calls("outbound", "inventory").method("/a.B/C").request("OK", 0.001)

    assert not any(name == "meshlet_requests_total" for name, _ in samples(second))


def test_label_values_stay_bounded_when_callers_invent_methods_and_pods_come_and_go() -> None:
    metrics = Metrics()
    bus = EventBus()
    metrics.watch(bus)
    for i in range(MAX_METHODS + 50):
        bus.emit(RetryScheduled("inventory", f"/made.Up/M{i}", 1, 0.0, "UNAVAILABLE"))
    gone, staying = Endpoint("10.0.0.2", 50051), Endpoint("10.0.0.3", 50051)
    bus.emit(BreakerOpened("inventory", gone, 10.0))
    bus.emit(BreakerOpened("inventory", staying, 10.0))
    bus.emit(EndpointsChanged("inventory", added=(), removed=(gone,), total=1))
    seen = samples(metrics)

    methods = {dict(labels)["method"] for name, labels in seen if name == "meshlet_retries_total"}
    assert len(methods) == MAX_METHODS + 1
    assert OTHER_METHOD in methods
    assert sum(value for (name, labels), value in seen.items() if name == "meshlet_retries_total") == MAX_METHODS + 50
    endpoints = {dict(labels)["endpoint"] for name, labels in seen if name == "meshlet_breaker_transitions_total"}
    assert endpoints == {"10.0.0.3:50051"}
    assert seen[("meshlet_breaker_openings_total", frozenset({("service", "inventory")}))] == 2  # the gone one's too


def test_invented_paths_share_one_unknown_label_and_leave_room_for_the_methods_that_exist() -> None:
    metrics = Metrics()
    declared = {"/shop.Inventory/GetStock"}  # what the sidecar knows from a descriptor set or reflection
    calls = metrics.calls("inbound", "inventory", MethodNames(declared.__contains__))
    for i in range(600):
        calls.method(f"/made.Up{i}/M{i}", answered=False).request("UNIMPLEMENTED", 0.001)
    calls.method("/shop.Inventory/GetStock", answered=False).request("PERMISSION_DENIED", 0.001)  # known: named
    calls.method("/shop.Orders/Place", answered=True).request("OK", 0.001)  # answered: named from now on
    calls.method("/shop.Orders/Place", answered=False).request("PERMISSION_DENIED", 0.001)
    seen = samples(metrics)

    requests = {(dict(labels)["method"], dict(labels)["code"]): value for (name, labels), value in seen.items()
                if name == "meshlet_requests_total"}  # fmt: skip
    assert requests == {
        (UNKNOWN_METHOD, "UNIMPLEMENTED"): 600,
        ("shop.Inventory/GetStock", "PERMISSION_DENIED"): 1,
        ("shop.Orders/Place", "OK"): 1,
        ("shop.Orders/Place", "PERMISSION_DENIED"): 1,
    }


def test_an_upstreams_counters_exist_at_zero_before_its_first_event() -> None:
    metrics = Metrics()
    metrics.calls("outbound", "inventory")  # what an upstream's observe stages do when its pipeline is built
    seen = samples(metrics)

    for name in ("meshlet_breaker_openings_total", "meshlet_retry_budget_refusals_total"):
        assert seen[(name, frozenset({("service", "inventory")}))] == 0
