"""The edge's HTTP metrics and its reflection-built descriptor pool, without processes."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshlet.config import load_config
from meshlet.errors import ConfigError
from meshlet.telemetry.metrics import Metrics
from meshlet_edge.observe import OTHER_METHOD, UNMATCHED, HttpMetrics, method_label
from meshlet_edge.reflection import pool_of
from meshlet_edge.registration import named


def test_methods_outside_https_set_share_one_label() -> None:
    assert method_label("GET") == "GET"
    assert method_label("PROPFIND") == OTHER_METHOD
    assert method_label("get") == OTHER_METHOD  # methods are case-sensitive (RFC 9110)


def test_http_metrics_render_counts_by_code_and_a_histogram_per_route_and_method() -> None:
    http = HttpMetrics()
    http.observe("/v1/items/{sku}", "GET", 200, 0.003, None)
    http.observe("/v1/items/{sku}", "GET", 200, 0.2, 0x1234)
    http.observe(UNMATCHED, OTHER_METHOD, 404, 0.001, None)
    metrics = Metrics(CollectorRegistry())
    metrics.collect_with(http.collect)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
        if sample.name.startswith("meshlet_http_")
    }
    ok = (("code", "200"), ("method", "GET"), ("route", "/v1/items/{sku}"))
    assert samples[("meshlet_http_requests_total", ok)] == 2
    refused = (("code", "404"), ("method", OTHER_METHOD), ("route", UNMATCHED))
    assert samples[("meshlet_http_requests_total", refused)] == 1
    route = (("method", "GET"), ("route", "/v1/items/{sku}"))
    assert samples[("meshlet_http_request_duration_seconds_count", route)] == 2
    assert samples[("meshlet_http_request_duration_seconds_bucket", (("le", "0.005"), *route))] == 1


def test_a_pool_takes_reflected_files_in_any_order() -> None:
    base = descriptor_pb2.FileDescriptorProto(name="a/base.proto", package="a")
    base.message_type.add(name="Thing")
    user = descriptor_pb2.FileDescriptorProto(name="a/user.proto", package="a", dependency=["a/base.proto"])
    service = user.service.add(name="Things")
    service.method.add(name="Get", input_type=".a.Thing", output_type=".a.Thing")
    pool = pool_of({"a/user.proto": user, "a/base.proto": base})  # the user first: it must still be added last
    assert pool.FindServiceByName("a.Things").methods_by_name["Get"].input_type.full_name == "a.Thing"


def test_reflection_and_descriptor_sets_are_one_source_or_the_other(tmp_path) -> None:
    path = tmp_path / "meshlet.yaml"
    path.write_text("edge: {reflection: true, descriptor_sets: [shop.pb]}\n")
    with pytest.raises(ConfigError, match=r"edge\.reflection.*descriptor_sets"):
        load_config(path)


def test_an_edge_without_a_service_name_is_named_edge(tmp_path) -> None:
    path = tmp_path / "meshlet.yaml"
    path.write_text("edge: {services: {a.B: b}}\n")
    assert named(load_config(path)).service.name == "edge"
    path.write_text("service: {name: front-door}\n")
    assert named(load_config(path)).service.name == "front-door"
