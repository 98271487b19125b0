"""meshlet-edge as an operator watches and runs it: the span tree of an HTTP request read from the edge's span
file, its metrics and the mesh's outbound ones on the admin port, /config, the access log, its instance in Consul
and the drain on SIGTERM, and routes built from the upstreams' reflection instead of descriptor sets.

Real processes on loopback, as in test_edge.py: a dev agent, the shop's inventory (a plain grpcio app that serves
reflection and reads a faults file) behind a sidecar, and the edge. Orders is configured but never started, so
its routes answer 503. The drain test stops the module's edge, so it comes last."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from meshlet.telemetry.span_file import SpanRecord, load_spans
from meshlet_shop_api.inventory.v1 import inventory_pb2
from meshlet_shop_api.orders.v1 import orders_pb2
from tests.support.agents import Agent, start_dev_agent
from tests.support.descriptor_sets import write_descriptor_set
from tests.support.processes import Child, Processes, free_port, http_ok, processes, wait_until
from tests.support.sidecars import START_S, admin_get, start_sidecar, write_config

WAIT_S = 20.0  # bounds waiting for a process, a span or a log line, never a timing assertion
TOKEN = "s3cret-consul-token"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
STOCK = "/v1/inventory/items/{sku}"
# A valid order (the edge validates before sending): refused only by the mesh, for want of an orders instance.
ORDER = {
    "requestId": "q-0",
    "customerId": "c-1",
    "items": [{"sku": "sku-tea", "quantity": 1}],
}  # valid: not refused at the edge


@dataclass
class Front:
    agent: Agent
    edge: Child
    url: str
    admin_url: str
    port: int
    inventory: Child
    faults: Path
    span_file: Path


def edge_argv(config: Path, listen: int, admin: int) -> list[str]:
    return [
        sys.executable, "-m", "meshlet_edge", "--config", str(config),
        "--listen", f"127.0.0.1:{listen}", "--admin-addr", f"127.0.0.1:{admin}",
    ]  # fmt: skip


def start_edge(procs: Processes, config: Path, name: str) -> tuple[Child, int, str]:
    """An edge on free ports, returned once its /ready says 200."""
    listen, admin = free_port(), free_port()
    edge = procs.start(edge_argv(config, listen, admin), name=name)
    admin_url = f"http://127.0.0.1:{admin}"
    try:
        wait_until(lambda: http_ok(admin_url + "/ready") or not edge.alive(), START_S, f"{name} to turn ready")
    except AssertionError:
        raise AssertionError(f"{name} never turned ready:\n{edge.output()}") from None
    assert edge.alive(), f"{name} exited at start:\n{edge.output()}"
    return edge, listen, admin_url


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


@pytest.fixture(scope="module")
def front(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Front:
    folder = tmp_path_factory.mktemp("edge-ops")
    agent = start_dev_agent(module_procs)
    faults = folder / "faults.json"
    faults.write_text(json.dumps({"latency_ms": 0}))
    port = free_port()
    argv = [sys.executable, "-m", "meshlet_shop.inventory", "--port", str(port), "--instance-id", "inventory-1"]
    inventory = module_procs.start([*argv, "--faults-file", str(faults)], name="inventory-1")
    wait_until(lambda: f"listening on {port}" in inventory.output() or not inventory.alive(), START_S, "inventory")
    assert inventory.alive(), inventory.output()
    plaintext = {"tls": {"source": "off"}, "consul": {"address": agent.url}}
    service = {"name": "inventory", "check_ttl": "1s", "drain_grace": "1s"}
    start_sidecar(module_procs, folder, "inventory", {**plaintext, "service": service}, app=f"127.0.0.1:{port}")

    descriptors = write_descriptor_set(folder / "shop.pb", inventory_pb2.DESCRIPTOR, orders_pb2.DESCRIPTOR)
    span_file = folder / "edge-spans.jsonl"
    edge_config = {
        "tls": {"source": "off"},
        "consul": {"address": agent.url, "token": TOKEN},  # the dev agent takes any token
        "service": {"check_ttl": "1s", "drain_grace": "15s"},  # no name: the edge registers as "edge"
        "upstreams": {"inventory": {"timeout": "15s"}},
        "telemetry": {"span_file": str(span_file), "access_log": True},
        "edge": {
            "services": {"shop.inventory.v1.Inventory": "inventory", "shop.orders.v1.Orders": "orders"},
            "descriptor_sets": [str(descriptors)],
        },
    }
    edge, listen, admin_url = start_edge(module_procs, write_config(folder / "edge.yaml", edge_config), "edge")
    return Front(agent, edge, f"http://127.0.0.1:{listen}", admin_url, listen, inventory, faults, span_file)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


async def status_of(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> int:
    async with http.request(method, url, **kwargs) as response:
        await response.read()
        return response.status


def spans_of(front: Front, trace_id: str, count: int) -> list[SpanRecord]:
    """The edge's spans of `trace_id`, once at least `count` reached its span file."""
    found: list[SpanRecord] = []

    def arrived() -> bool:
        nonlocal found
        if not front.span_file.exists():
            return False
        found = [span for span in load_spans([front.span_file]) if span.trace_id == trace_id]
        return len(found) >= count

    wait_until(arrived, WAIT_S, f"{count} spans of trace {trace_id} in the edge's span file")
    return found


def server_span(spans: list[SpanRecord]) -> SpanRecord:
    found = [span for span in spans if span.kind == "SERVER"]
    assert len(found) == 1, spans
    return found[0]


def samples(admin_url: str, family: str) -> list[tuple[dict[str, str], float]]:
    status, text = admin_get(admin_url + "/metrics")
    assert status == 200, text
    return [
        (sample.labels, sample.value)
        for metric in text_string_to_metric_families(text)
        for sample in metric.samples
        if sample.name == family
    ]


def value(admin_url: str, family: str, **labels: str) -> float:
    return sum(v for found, v in samples(admin_url, family) if all(found.get(k) == w for k, w in labels.items()))


# ------------------------------------------------------------------------------------------ traces


async def test_a_request_is_a_server_span_continuing_the_callers_trace_above_the_call_span(front: Front, http) -> None:
    headers = {
        "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01",
        "User-Agent": "ops-test/1.0",
        "X-Request-Id": "req-ops-1",
    }
    assert await status_of(http, "GET", front.url + "/v1/inventory/items/sku-tea", headers=headers) == 200

    spans = spans_of(front, TRACE_ID, 3)  # the request's, the call's and its attempt's
    server = server_span(spans)
    assert server.name == f"GET {STOCK}"
    assert server.parent_id == CLIENT_SPAN_ID  # the client's traceparent is continued
    assert server.face == "edge"
    assert server.service == "edge"
    assert server.status == "UNSET"
    attributes = server.attributes
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.route"] == STOCK
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.path"] == "/v1/inventory/items/sku-tea"
    assert attributes["user_agent.original"] == "ops-test/1.0"
    assert attributes["http.request.header.x-request-id"] == ["req-ops-1"]
    call = next(span for span in spans if span.parent_id == server.span_id)
    assert call.name == "shop.inventory.v1.Inventory/GetStock"
    assert call.attributes["meshlet.upstream"] == "inventory"
    attempt = next(span for span in spans if span.parent_id == call.span_id)
    assert attempt.kind == "CLIENT"


async def test_a_5xx_marks_the_server_span_an_error_and_a_request_without_route_has_none(front: Front, http) -> None:
    trace_503, trace_404 = "1" * 32, "2" * 32
    order = {**ORDER, "requestId": "q-1"}
    headers = {"traceparent": f"00-{trace_503}-{CLIENT_SPAN_ID}-01"}
    assert await status_of(http, "POST", front.url + "/v1/orders", json=order, headers=headers) == 503
    headers = {"traceparent": f"00-{trace_404}-{CLIENT_SPAN_ID}-01"}
    assert await status_of(http, "GET", front.url + "/v1/nowhere", headers=headers) == 404

    failed = server_span(spans_of(front, trace_503, 2))
    assert failed.name == "POST /v1/orders"
    assert failed.status == "ERROR"
    assert failed.attributes["http.response.status_code"] == 503
    assert failed.attributes["error.type"] == "503"
    unmatched = spans_of(front, trace_404, 1)
    assert [span.name for span in unmatched] == ["GET"]  # no route, no call: one span, named by its method
    assert unmatched[0].status == "UNSET"  # a 4xx is the client's mistake, not the server's error
    assert "http.route" not in unmatched[0].attributes
    assert unmatched[0].attributes["http.response.status_code"] == 404


async def test_a_caller_that_did_not_sample_its_trace_gets_no_spans_from_the_edge(front: Front, http) -> None:
    unsampled, sampled = "3" * 32, "4" * 32
    headers = {"traceparent": f"00-{unsampled}-{CLIENT_SPAN_ID}-00"}
    assert await status_of(http, "GET", front.url + "/v1/inventory/items/sku-tea", headers=headers) == 200
    headers = {"traceparent": f"00-{sampled}-{CLIENT_SPAN_ID}-01"}
    assert await status_of(http, "GET", front.url + "/v1/inventory/items/sku-tea", headers=headers) == 200
    spans_of(front, sampled, 3)  # written after the first request's would have been
    assert not [span for span in load_spans([front.span_file]) if span.trace_id == unsampled]


# ------------------------------------------------------------------------------------------ metrics and logs


async def test_metrics_count_requests_by_route_method_and_code_beside_the_outbound_families(front: Front, http) -> None:
    before = value(front.admin_url, "meshlet_http_requests_total", route=STOCK, method="GET", code="200")
    assert await status_of(http, "GET", front.url + "/v1/inventory/items/sku-tea") == 200
    assert await status_of(http, "GET", front.url + "/v1/inventory/items/sku-unicorn") == 404  # the upstream's
    assert await status_of(http, "GET", front.url + "/no/such/route") == 404
    assert await status_of(http, "PROPFIND", front.url + "/v1/coffee") == 404
    assert await status_of(http, "POST", front.url + "/v1/orders", json={**ORDER, "requestId": "q-2"}) == 503

    url = front.admin_url
    assert value(url, "meshlet_http_requests_total", route=STOCK, method="GET", code="200") == before + 1
    assert value(url, "meshlet_http_requests_total", route=STOCK, method="GET", code="404") >= 1
    assert value(url, "meshlet_http_requests_total", route="(unmatched)", method="GET", code="404") >= 1
    assert value(url, "meshlet_http_requests_total", route="(unmatched)", method="_OTHER", code="404") >= 1
    assert value(url, "meshlet_http_requests_total", route="/v1/orders", method="POST", code="503") >= 1
    assert value(url, "meshlet_http_request_duration_seconds_count", route=STOCK, method="GET") >= before + 1
    routes = {labels["route"] for labels, _ in samples(url, "meshlet_http_requests_total")}
    assert routes <= {STOCK, "/v1/orders", "(unmatched)"}, "a label value came from a client's path"
    outbound = {"direction": "outbound", "service": "inventory", "method": "shop.inventory.v1.Inventory/GetStock"}
    assert value(url, "meshlet_requests_total", **outbound, code="OK") >= 1
    assert value(url, "meshlet_requests_total", direction="outbound", service="orders") >= 1


async def test_the_access_log_has_a_json_line_per_request_with_its_route_and_request_id(front: Front, http) -> None:
    headers = {"X-Request-Id": "req-ops-log"}
    assert await status_of(http, "GET", front.url + "/v1/inventory/items/sku-mug", headers=headers) == 200

    def line() -> dict[str, Any] | None:
        for text in front.edge.output().splitlines():
            if "req-ops-log" in text and text.startswith("{"):
                entry: dict[str, Any] = json.loads(text)
                if entry.get("direction") == "http":
                    return entry
        return None

    wait_until(lambda: line() is not None, WAIT_S, "the request's access log line")
    entry = line()
    assert entry is not None
    assert entry["logger"] == "meshlet.access"
    assert (entry["http_method"], entry["route"], entry["code"]) == ("GET", STOCK, 200)
    assert entry["path"] == "/v1/inventory/items/sku-mug"
    assert len(entry["trace_id"]) == 32


def test_config_shows_the_effective_configuration_with_secrets_redacted(front: Front) -> None:
    status, text = admin_get(front.admin_url + "/config")
    assert status == 200, text
    assert TOKEN not in text
    config = json.loads(text)
    assert config["service"]["name"] == "edge"  # the default for an edge
    assert config["consul"]["token"] != TOKEN
    assert config["edge"]["services"]["shop.inventory.v1.Inventory"] == "inventory"
    status, text = admin_get(front.admin_url + "/nothing")
    assert status == 404
    assert "/config" in text


# ------------------------------------------------------------------------------------------ reflection


def reflection_config(agent: Agent, services: dict[str, str], timeout: str = "30s") -> dict[str, Any]:
    return {
        "tls": {"source": "off"},
        "consul": {"address": agent.url},
        "service": {"name": "edge-reflected"},
        "edge": {"services": services, "reflection": True, "reflection_timeout": timeout},
    }


async def test_reflection_describes_the_services_and_their_routes_are_served(
    front: Front, procs: Processes, tmp_path: Path, http
) -> None:
    config = reflection_config(front.agent, {"shop.inventory.v1.Inventory": "inventory"})
    edge, listen, _ = start_edge(procs, write_config(tmp_path / "edge.yaml", config), "edge-reflected")
    url = f"http://127.0.0.1:{listen}"
    async with http.get(url + "/v1/inventory/items/sku-tea") as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["sku"] == "sku-tea"
    request = {"reservationId": "r-reflected", "quantity": 1}
    async with http.post(url + "/v1/inventory/items/sku-mug:reserve", json=request) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["reservationId"] == "r-reflected"
    assert "learnt shop.inventory.v1.Inventory from inventory's reflection service" in edge.output()


def test_a_service_no_upstream_describes_ends_the_start_with_exit_1_naming_it(
    front: Front, procs: Processes, tmp_path: Path
) -> None:
    config = reflection_config(front.agent, {"shop.orders.v1.Orders": "inventory"}, timeout="1s")
    path = write_config(tmp_path / "edge.yaml", config)
    edge = procs.start(edge_argv(path, free_port(), free_port()), name="edge-undescribed")
    assert edge.wait(START_S) == 1, edge.output()
    output = edge.output()
    assert "shop.orders.v1.Orders" in output
    assert "edge.reflection_timeout" in output
    assert "Traceback" not in output


def test_reflection_and_descriptor_sets_together_exit_2_naming_both(procs: Processes, tmp_path: Path) -> None:
    config = {
        "tls": {"source": "off"},
        "edge": {"services": {"a.B": "b"}, "reflection": True, "descriptor_sets": [str(tmp_path / "x.pb")]},
    }
    edge = procs.start(edge_argv(write_config(tmp_path / "edge.yaml", config), free_port(), free_port()), name="e")
    assert edge.wait(START_S) == 2
    assert "edge.reflection" in edge.output()
    assert "descriptor_sets" in edge.output()


# ------------------------------------------------------------------------------------------ Consul and drain


def test_the_edge_registers_as_edge_with_a_passing_ttl_check(front: Front) -> None:
    consul = front.agent.client()

    def passing() -> list[dict[str, Any]]:
        _, found = consul.health.service("edge", passing=True)
        return list(found)

    wait_until(lambda: len(passing()) == 1, WAIT_S, "the edge's instance to pass its check")
    instance = passing()[0]["Service"]
    assert (instance["Address"], instance["Port"]) == ("127.0.0.1", front.port)


async def test_sigterm_deregisters_fails_ready_and_finishes_the_request_in_flight(front: Front, http) -> None:
    consul = front.agent.client()
    front.faults.write_text(json.dumps({"latency_ms": 4000}))
    wait_until(lambda: "latency_ms=4000" in front.inventory.output(), WAIT_S, "inventory to read its slower faults")
    in_flight = {"direction": "outbound", "service": "inventory"}
    try:
        slow = asyncio.create_task(status_of(http, "GET", front.url + "/v1/inventory/items/sku-tea"))
        await asyncio.to_thread(
            wait_until,
            lambda: value(front.admin_url, "meshlet_in_flight", **in_flight) == 1,
            WAIT_S,
            "the slow request to reach the upstream",
        )
        front.edge.signal(signal.SIGTERM)

        def gone() -> bool:
            _, found = consul.catalog.service("edge")
            return not found

        await asyncio.to_thread(wait_until, gone, WAIT_S, "the edge to leave Consul's catalog")

        def draining() -> bool:
            return admin_get(front.admin_url + "/ready") == (503, "waiting for: nothing: draining for shutdown\n")

        await asyncio.to_thread(wait_until, draining, WAIT_S, "/ready to say the edge drains")
        assert await slow == 200  # in flight when the signal came, answered all the same
    finally:
        front.faults.write_text(json.dumps({"latency_ms": 0}))
    assert await asyncio.to_thread(front.edge.wait, WAIT_S) == 0, front.edge.output()
    assert "Traceback" not in front.edge.output()
