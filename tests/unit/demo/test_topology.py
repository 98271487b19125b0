"""The demo's mesh: the issue's topology on distinct loopback ports, with mTLS from Consul and its own config
files that the environment cannot override by accident."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from meshlet.config import load_config
from meshlet.demo.addresses import without_password
from meshlet.demo.topology import (
    Settings,
    agent_spec,
    child_environment,
    child_specs,
    client_config,
    edge_spec,
    plan_topology,
)

SETTINGS = Settings(python="python3", consul_address="http://127.0.0.1:8500", span_files=True)


def plan(tmp_path: Path):
    return plan_topology(tmp_path, itertools.count(20000))


def test_the_shop_is_gateway_orders_three_inventories_and_payments(tmp_path: Path) -> None:
    topology = plan(tmp_path)

    assert [i.name for i in topology.instances] == [
        "inventory-1",
        "inventory-2",
        "inventory-3",
        "payments",
        "orders",
        "gateway",
    ]
    assert all(i.sidecar for i in topology.of("inventory") + topology.of("payments"))
    assert all(i.metrics_port and not i.sidecar for i in topology.of("orders") + topology.of("gateway"))


def test_every_port_is_distinct(tmp_path: Path) -> None:
    topology = plan(tmp_path)
    ports = []
    for instance in topology.instances:
        ports.append(instance.app_port)
        if instance.sidecar:
            ports += [instance.sidecar.inbound, instance.sidecar.outbound, instance.sidecar.admin]
        if instance.metrics_port:
            ports.append(instance.metrics_port)

    assert len(ports) == len(set(ports))
    assert topology.names_by_endpoint()[topology.instance("inventory-2").endpoint] == "inventory-2"


def test_every_generated_config_is_valid_and_uses_the_connect_ca(tmp_path: Path) -> None:
    topology = plan(tmp_path)
    specs = [spec for i in topology.instances for spec in child_specs(topology, i, SETTINGS)]
    configs = [spec.config for spec in specs if spec.config is not None]

    assert len(specs) == 10  # 4 plain apps + 4 sidecars + 2 SDK services
    assert len(configs) == 6
    for config in [*configs, client_config(topology, SETTINGS)]:
        loaded = load_config(None, env={}, overrides=config)
        assert loaded.tls.source == "consul"
        assert loaded.consul.address == "http://127.0.0.1:8500"
        assert loaded.telemetry.span_file is not None


def test_a_sidecar_forwards_to_its_own_app_and_the_app_reads_its_faults_file(tmp_path: Path) -> None:
    topology = plan(tmp_path)
    instance = topology.instance("inventory-2")

    app, sidecar = child_specs(topology, instance, SETTINGS)

    assert "--faults-file" in app.argv
    assert str(topology.faults_file("inventory-2")) in app.argv
    assert sidecar.config is not None
    assert sidecar.config["sidecar"]["app"] == f"127.0.0.1:{instance.app_port}"
    assert sidecar.config["service"]["name"] == "inventory"


def test_the_driver_sees_what_the_gateway_answered_without_retrying(tmp_path: Path) -> None:
    config = load_config(None, env={}, overrides=client_config(plan(tmp_path), SETTINGS))

    assert config.upstream("gateway").retry.max_attempts == 1


def test_children_ignore_the_callers_meshlet_variables_and_get_consul_and_otlp() -> None:
    settings = Settings("python3", "http://127.0.0.1:9", otlp_endpoint="http://localhost:4317")
    parent = {"PATH": "/bin", "MESHLET_SERVICE__NAME": "oops", "OTEL_SERVICE_NAME": "mine"}

    env = child_environment(parent, settings, {"MESHLET_CONFIG": "/x.yaml"})

    assert env["PATH"] == "/bin"
    assert "MESHLET_SERVICE__NAME" not in env
    assert "OTEL_SERVICE_NAME" not in env
    assert env["MESHLET_CONFIG"] == "/x.yaml"
    assert env["CONSUL_HTTP_ADDR"] == "http://127.0.0.1:9"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"


def test_children_run_on_the_loop_the_caller_chose() -> None:
    """MESHLET_LOOP is how a process runs, not the mesh's config: the demo's children get the demo's choice."""
    env = child_environment({"MESHLET_LOOP": "asyncio"}, Settings("python3", "http://127.0.0.1:9"), {})

    assert env["MESHLET_LOOP"] == "asyncio"


def test_the_agent_listens_on_loopback() -> None:
    assert agent_spec("python3", 8501).argv[-2:] == ("--http-addr", "127.0.0.1:8501")


def test_the_edge_has_ports_of_its_own_and_a_valid_config_routing_the_shop(tmp_path: Path) -> None:
    topology = plan(tmp_path)
    assert topology.edge is not None
    taken = {i.app_port for i in topology.instances} | {i.metrics_port for i in topology.instances}
    assert {topology.edge.listen, topology.edge.admin}.isdisjoint(taken)
    assert topology.edge.listen != topology.edge.admin

    (tmp_path / "shop.binpb").write_bytes(b"")  # the config checks that the file is there, not what it holds
    spec = edge_spec(topology, SETTINGS, tmp_path / "shop.binpb")
    assert spec.argv[1:3] == ("-m", "meshlet_edge")
    loaded = load_config(None, env={}, overrides=spec.config)
    assert loaded.tls.source == "consul"
    assert loaded.edge.listen == f"127.0.0.1:{topology.edge.listen}"
    assert set(loaded.edge.services.values()) == {"gateway", "orders", "inventory"}
    assert loaded.edge.descriptor_sets == (tmp_path / "shop.binpb",)


@pytest.mark.parametrize("store", ["memory", "redis://127.0.0.1:6390/3"])
def test_the_edge_limits_and_caches_in_memory_or_the_redis_of_redis_url(tmp_path: Path, store: str) -> None:
    """A generous default plan (the demo's own traffic is never refused), the stock read cached publicly and
    dropped by any write to inventory through the edge; both stores where the demo was told (REDIS_URL)."""
    topology = plan(tmp_path)
    (tmp_path / "shop.binpb").write_bytes(b"")
    spec = edge_spec(topology, dataclasses.replace(SETTINGS, edge_store=store), tmp_path / "shop.binpb")
    edge = load_config(None, env={}, overrides=spec.config).edge
    assert (edge.limits.store, edge.cache.store) == (store, store)
    assert edge.plans["default"].rate_per_s is not None
    assert edge.plans["default"].rate_per_s >= 1000, "more than one edge process serves: never a 429 in the demo"
    [rule] = edge.cache.routes
    assert rule.match == "/shop.inventory.v2.Inventory/GetItem"
    assert rule.public
    assert "/shop.inventory.v2.Inventory/*" in rule.invalidate


def test_a_redis_url_is_shown_without_its_password() -> None:
    assert without_password("redis://:s3cret@redis:6379/1") == "redis://redis:6379/1"
    assert without_password("redis://user:pw@[::1]:6379/0") == "redis://[::1]:6379/0"
    assert without_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert without_password("memory") == "memory"
