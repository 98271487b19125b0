"""meshlet-edge in k8s/: what it runs and with which config, where its routes come from in the image, its probes,
its drain, its Service, and that the mesh lets it in (NetworkPolicies, intentions, Consul ACLs, certificates)."""

from __future__ import annotations

import re
import tomllib
import urllib.parse
from pathlib import Path

import pytest

from meshlet.config import Config, EdgeConfig, load_config, split_host_port
from meshlet.discovery.registration import REQUEST_TIMEOUT_S as DEREGISTER_TIMEOUT_S
from meshlet.telemetry.tracing import SHUTDOWN_S as SPAN_FLUSH_S
from meshlet_edge.auth.rules import compile_rules as auth_rules
from meshlet_edge.cache.policy import ResponseCache
from meshlet_edge.cors import CorsPolicy
from meshlet_edge.edge import DRAIN_S
from meshlet_edge.limits.policy import Limits
from meshlet_edge.routes import build_routes, load_pool
from tests.k8s.manifests import (
    EDGE_CONFIG_DIR,
    OVERLAYS,
    EdgePod,
    Obj,
    edge_pod,
    has_port,
    meshlet_pods,
    named,
    pod_env,
    render,
    workload,
    workloads,
)
from tests.k8s.test_dockerfile import DOCKERFILE, stages
from tests.support.processes import REPO_ROOT

SHOP_STORE_DB = 0  # redis://redis:6379/0: prod's orders and inventory (shared-store.yaml)
SHOP_DESCRIPTORS = REPO_ROOT / "protos" / "meshlet_shop_api" / "descriptors.binpb"  # `make protos` writes it
EVERY_ADDRESS = "::"
MARGIN_S = 5


def edge_config(pod: EdgePod, tmp_path: Path, overlay: str = "") -> Config:
    path = tmp_path / f"edge-{overlay}.yaml"
    path.write_text(pod.config_text)
    return load_config(path, env=pod_env(pod.container), check_files=False)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_edge_runs_meshlet_edge_with_its_config_map(overlay: str, tmp_path: Path) -> None:
    pod = edge_pod(render(overlay))
    assert pod.container["command"] == ["meshlet-edge", "--config", f"{EDGE_CONFIG_DIR}/meshlet.yaml"]
    config = edge_config(pod, tmp_path, overlay)
    assert config.service.name == "edge"
    assert config.consul.address == "http://192.168.49.2:8500"  # the node's agent
    expected_tls = "files" if overlay == "cert-manager" else "consul"
    assert config.tls.source == expected_tls
    assert pod_env(pod.container)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"


def test_the_routes_come_from_the_descriptor_set_the_image_installs(tmp_path: Path) -> None:
    """edge.descriptor_sets names the file the Dockerfile installs from the wheel, which ships the set that
    `make protos` writes (tests/unit/test_protos.py keeps it fresh); with it the configured services route."""
    config = edge_config(edge_pod(render("dev")), tmp_path)
    [installed] = config.edge.descriptor_sets
    *_, final = stages(DOCKERFILE)
    runs = " ".join(final.args("RUN"))
    assert re.search(rf'with_name\("{SHOP_DESCRIPTORS.name}"\)\)\'\)"\s+{re.escape(str(installed))}\b', runs), runs
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert f"*{SHOP_DESCRIPTORS.suffix}" in package_data["*"], "the wheel must ship the descriptor set"
    table = build_routes(config.edge.services, load_pool([SHOP_DESCRIPTORS]))
    checkout = table.match("POST", "/v1/checkout")
    assert checkout is not None
    assert checkout.route.path == "/shop.gateway.v1.Gateway/Checkout"
    assert table.match("GET", "/v1/orders/o-1") is not None
    item = table.match("GET", "/v2/inventory/items/sku-tea")
    assert item is not None, "inventory v2's reads are public"
    assert item.route.path == "/shop.inventory.v2.Inventory/GetItem"
    assert table.match("GET", "/v1/inventory/items/sku-tea") is None, "inventory v1, deprecated, stays inside"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_on_the_admin_port_and_a_load_balancer_to_the_http_port(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    pod = edge_pod(objects)
    config = edge_config(pod, tmp_path, overlay)
    listen_host, listen_port = split_host_port(config.edge.listen)
    admin_host, admin_port = split_host_port(config.edge.admin)
    assert (listen_host, admin_host) == (EVERY_ADDRESS, EVERY_ADDRESS), "the kubelet and the Service use the pod IP"
    container = pod.container
    assert has_port(container, listen_port)
    assert has_port(container, admin_port)
    for kind, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live"), ("startupProbe", "/live")):
        probe = container[kind]["httpGet"]
        assert probe["path"] == path, kind
        assert any(
            p["containerPort"] == admin_port and probe["port"] in (admin_port, p["name"]) for p in container["ports"]
        )
    service = named(objects, "Service")["edge"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert pod.workload.selected_by(service["spec"]["selector"])
    [port] = service["spec"]["ports"]
    target = next(p for p in container["ports"] if port["targetPort"] in (p["containerPort"], p["name"]))
    assert target["containerPort"] == listen_port
    assert admin_port not in {p.get("targetPort") for p in service["spec"]["ports"]}, "the admin stays off the LB"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_edge_drains_before_the_kubelet_kills_it(overlay: str, tmp_path: Path) -> None:
    """preStop waits while the endpoints drop the pod; then SIGTERM: requests in flight finish (DRAIN_S), the mesh
    closes (deregistering, the last spans), all inside terminationGracePeriodSeconds with a margin."""
    pod = edge_pod(render(overlay))
    command = pod.container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    [notice] = [float(n) for n in re.findall(r"time\.sleep\(([\d.]+)\)", command[2])]
    assert notice >= 3, "long enough for kube-proxy and the load balancer to stop sending"
    worst = notice + DRAIN_S + DEREGISTER_TIMEOUT_S + SPAN_FLUSH_S
    assert pod.workload.pod["terminationGracePeriodSeconds"] >= worst + MARGIN_S


def test_prod_runs_two_edges_spread_over_nodes_with_a_disruption_budget() -> None:
    objects = render("prod")
    edge = workload(objects, "edge")
    assert edge.obj["spec"]["replicas"] >= 2
    assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in edge.pod["topologySpreadConstraints"])
    budgets = named(objects, "PodDisruptionBudget").values()
    assert any(edge.selected_by(b["spec"]["selector"]) and b["spec"].get("minAvailable") == 1 for b in budgets)
    assert workload(render("dev"), "edge").obj["spec"]["replicas"] == 1


def _admitted(objects: list[Obj], target: str, source: str) -> set[int]:
    """The TCP ports NetworkPolicies open on workload `target` to pods of workload `source` (None: anyone)."""
    guarded = workload(objects, target)
    sender = workload(objects, source) if source else None
    ports: set[int] = set()
    for policy in named(objects, "NetworkPolicy").values():
        if not guarded.selected_by(policy["spec"]["podSelector"]):
            continue
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            anyone = not peers
            if anyone or (sender and any("podSelector" in p and sender.selected_by(p["podSelector"]) for p in peers)):
                ports |= {p["port"] for p in rule.get("ports", []) if p.get("protocol", "TCP") == "TCP"}
    return ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_clients_in_and_the_edge_into_the_mesh(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    config = edge_config(edge_pod(objects), tmp_path, overlay)
    _, listen_port = split_host_port(config.edge.listen)
    assert listen_port in _admitted(objects, "edge", ""), "clients from outside reach the HTTP listener"
    for upstream in set(config.edge.services.values()):
        assert 15006 in _admitted(objects, upstream, "edge"), f"the edge reaches {upstream}'s mesh port"
    if overlay == "prod":
        assert 8500 in _admitted(objects, "consul-client", "edge"), "the edge reaches the node's Consul agent"
        assert 4317 in _admitted(objects, "jaeger", "edge"), "the edge's spans reach Jaeger"
        redis = urllib.parse.urlsplit(config.edge.limits.store)
        assert redis.port in _admitted(objects, str(redis.hostname), "edge"), "the edge reaches its Redis"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_intentions_let_the_edge_call_what_it_serves_and_orders_only_for_reads(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    config = edge_config(edge_pod(objects), tmp_path, overlay)
    pods = meshlet_pods(objects)
    for upstream in set(config.edge.services.values()):
        authz = pods[upstream].config.get("authz", {})
        allowed = authz.get("default", "allow") == "allow" or any(r["from"] == "edge" for r in authz.get("rules", []))
        assert allowed, f"{upstream}'s intentions leave the edge out"
    orders = [r for r in pods["orders"].config["authz"]["rules"] if r["from"] == "edge"]
    assert orders, "orders lets the edge in"
    assert {m for r in orders for m in r["methods"]} == {
        "/shop.orders.v1.Orders/GetOrder",
        "/shop.orders.v1.Orders/ListOrders",
    }, "clients outside read orders; they create them through the gateway's checkout"
    inventory = [r for r in pods["inventory"].config["authz"]["rules"] if r["from"] == "edge"]
    assert {m for r in inventory for m in r["methods"]} == {
        "/shop.inventory.v2.Inventory/GetItem",
        "/shop.inventory.v2.Inventory/ListItems",
    }, "clients outside read the stock; reservations are the checkout's"


def test_prod_edge_logs_in_to_consul_as_edge() -> None:
    objects = render("prod")
    edge = workload(objects, "edge")
    assert edge.pod["serviceAccountName"] == "edge"
    assert "edge" in named(objects, "ServiceAccount")
    assert edge.pod["initContainers"][0]["name"] == "consul-login", "its token before the edge starts"
    assert pod_env(edge.container("edge"))["CONSUL_HTTP_TOKEN_FILE"] == "/consul/acl/token"


# ---------------------------------------------------------------- the edge's policies (docs/edge.md)


@pytest.mark.parametrize("overlay", OVERLAYS)
async def test_the_edges_policies_load_and_compile_as_the_edge_builds_them(overlay: str, tmp_path: Path) -> None:
    """A config the edge refuses at start crash-loops the pod: the ConfigMap loads with meshlet's own loader (the
    pod's environment applied), and its auth, limits, cache and CORS compile as the edge compiles them at start
    (stores made, not connected). The cache rule names a GET of the route table whose method has no side effects,
    and is public: nothing here authenticates a caller, and a private rule caches nothing for nobody."""
    config = edge_config(edge_pod(render(overlay)), tmp_path, overlay).edge
    auth_rules(config.auth.routes)
    limits = Limits(config)
    cache = ResponseCache(config.cache)
    try:
        _check_policies(config, limits, cache)
    finally:
        await limits.close()
        await cache.close()


def _check_policies(config: EdgeConfig, limits: Limits, cache: ResponseCache) -> None:
    table = build_routes(config.services, load_pool([SHOP_DESCRIPTORS]))
    assert config.cors is not None
    CorsPolicy(config.cors, ["GET", "POST"])
    assert not config.auth.routes, "no identity provider ships with the shop: anonymous callers, by address"
    assert limits.plan(None).name == "default"
    burst = limits.plan(None).burst
    assert all(route.cost <= burst for route in config.limits.routes), "a cost above the burst is always refused"
    found = table.match("GET", "/v2/inventory/items/sku-tea")
    assert found is not None
    rule = cache.rule_for("GET", "/v2/inventory/items/sku-tea", found.route.path)
    assert rule is not None
    assert rule.public
    assert cache.rule_for("GET", "/v2/inventory/items", "/shop.inventory.v2.Inventory/ListItems") is None
    assert found.route.safe, "GetItem is declared idempotency_level = NO_SIDE_EFFECTS"


def test_anonymous_callers_are_told_apart_by_their_own_address(tmp_path: Path) -> None:
    """The Service is an L4 load balancer keeping the client's address (externalTrafficPolicy: Local) and adding
    no X-Forwarded-For, so the edge believes none: one a client writes cannot choose whose bucket it spends."""
    objects = render("dev")
    assert named(objects, "Service")["edge"]["spec"]["externalTrafficPolicy"] == "Local"
    pod = edge_pod(objects)
    config = edge_config(pod, tmp_path)
    assert config.edge.limits.trusted_proxies == ()
    assert config.edge.plans["default"].rate_per_s, "anonymous callers are limited per address"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prod_edges_share_limits_and_cache_in_redis_dev_keeps_them_in_its_process(overlay: str, tmp_path: Path) -> None:
    """Two replicas counting apart would let a client through twice its plan: prod's edges keep their counters
    and cache in the overlay's Redis, in databases of their own beside the shop's state, and fail open when it is
    away; one replica (dev, cert-manager) keeps them in memory."""
    objects = render(overlay)
    edge = workload(objects, "edge")
    config = edge_config(edge_pod(objects), tmp_path, overlay).edge
    if overlay != "prod":
        assert (config.limits.store, config.cache.store) == ("memory", "memory")
        assert edge.obj["spec"].get("replicas", 1) == 1
        return
    assert edge.obj["spec"]["replicas"] >= 2
    assert config.limits.on_store_error == "open"
    dbs = set()
    for store in (config.limits.store, config.cache.store):
        url = urllib.parse.urlsplit(store)
        assert url.scheme == "redis"
        service = named(objects, "Service")[str(url.hostname)]
        assert any(p["port"] == url.port for p in service["spec"]["ports"])
        [redis] = [w for w in workloads(objects) if w.selected_by(service["spec"]["selector"])]
        assert redis.name == "redis"
        dbs.add(int(url.path.strip("/") or 0))
    assert len(dbs) == 2, "flushing the cache leaves the counters alone"
    assert SHOP_STORE_DB not in dbs, "and the shop's state"
