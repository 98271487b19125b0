"""The mesh the demo runs, as data: which processes, on which loopback ports, with which configuration.

Pure: ports come from an iterator the caller fills (free ports it probed), paths from the run's folder, so the
whole plan can be checked without starting anything. Every child gets the production settings: certificates
from the agent's Connect CA (``tls.source: consul``), a short TTL check so that a dead instance leaves the
passing set within a second, and a span file so that the demo can draw a trace without Jaeger.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

HOST = "127.0.0.1"
CLIENT_SERVICE = "shop-client"
SPAN_SUFFIX = ".spans.jsonl"  # the demo's own traffic driver, as Consul and the traces name it

# (service, mode, instances): gateway -> orders -> inventory x3 and payments, as in the issue.
SHOP: tuple[tuple[str, Literal["sdk", "plain"], int], ...] = (
    ("inventory", "plain", 3),
    ("payments", "plain", 1),
    ("orders", "sdk", 1),
    ("gateway", "sdk", 1),
)

# What the SDK services and the sidecars share: a TTL short enough that the demo sees an instance leave within
# its run, and a short drain so that the demo stops in seconds.
_SERVICE_DEFAULTS = {"check_ttl": "1s", "drain_grace": "1s"}
# The breaker probes after 3s, backing off to 5s (not 10s and 60s) so that open -> half-open -> closed fits in
# a 30s run.
_UPSTREAM_DEFAULTS = {"timeout": "2s", "breaker": {"failures": 5, "reset_timeout": "3s", "reset_timeout_max": "5s"}}


@dataclass(frozen=True)
class SidecarPorts:
    inbound: int
    outbound: int
    admin: int


@dataclass(frozen=True)
class Instance:
    """One instance of a shop service: the app, and for plain apps the sidecar in front of it."""

    name: str  # inventory-2
    service: str  # inventory
    app_port: int
    sidecar: SidecarPorts | None = None
    metrics_port: int | None = None  # SDK services only: telemetry.metrics_port

    @property
    def endpoint(self) -> str:
        """The address registered in Consul, which callers dial (the sidecar's inbound for a plain app)."""
        return f"{HOST}:{self.sidecar.inbound if self.sidecar else self.app_port}"

    @property
    def admin_url(self) -> str | None:
        return f"http://{HOST}:{self.sidecar.admin}" if self.sidecar else None

    @property
    def metrics_url(self) -> str | None:
        """Where this instance's meshlet metrics are: the SDK's metrics port, else the sidecar's admin page."""
        if self.metrics_port is not None:
            return f"http://{HOST}:{self.metrics_port}/metrics"
        return f"{self.admin_url}/metrics" if self.admin_url else None


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child process: its argv, what it adds to the environment, its config file."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    config_path: Path | None = None
    config: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Settings:
    """What every child shares: the interpreter, Consul, and where traces go."""

    python: str
    consul_address: str  # http://127.0.0.1:8500
    otlp_endpoint: str | None = None
    span_files: bool = True  # False while this build's config has no telemetry.span_file
    edge_store: str = "memory"  # where the edge keeps its rate limits and cache: $REDIS_URL when set


@dataclass(frozen=True)
class EdgePorts:
    """meshlet-edge in front of the shop: its HTTP listener and its admin page."""

    listen: int
    admin: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.listen}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin}"


@dataclass(frozen=True)
class Topology:
    folder: Path
    instances: tuple[Instance, ...]
    edge: EdgePorts | None = None

    def instance(self, name: str) -> Instance:
        for instance in self.instances:
            if instance.name == name:
                return instance
        raise KeyError(f"no instance {name!r}; the demo runs {', '.join(i.name for i in self.instances)}")

    def of(self, service: str) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.service == service)

    def names_by_endpoint(self) -> dict[str, str]:
        """``127.0.0.1:port`` -> instance name, to say "inventory-2" where metrics and Consul say an address."""
        return {i.endpoint: i.name for i in self.instances}

    def config_path(self, name: str) -> Path:
        return self.folder / f"{name}.yaml"

    def faults_file(self, name: str) -> Path:
        return self.folder / f"{name}.faults.json"

    def span_file(self, name: str) -> Path:
        """One per process (spans are appended by one writer each): ``<process name>.spans.jsonl``."""
        return self.folder / f"{name}{SPAN_SUFFIX}"


def plan_topology(folder: Path, ports: Iterator[int]) -> Topology:
    """Name every instance and give it ports: the app's, and a sidecar's three or an SDK service's metrics port."""
    instances: list[Instance] = []
    for service, mode, count in SHOP:
        for index in range(1, count + 1):
            name = f"{service}-{index}" if count > 1 else service
            if mode == "plain":
                sidecar = SidecarPorts(inbound=next(ports), outbound=next(ports), admin=next(ports))
                instances.append(Instance(name, service, next(ports), sidecar=sidecar))
            else:
                instances.append(Instance(name, service, next(ports), metrics_port=next(ports)))
    return Topology(folder, tuple(instances), EdgePorts(listen=next(ports), admin=next(ports)))


def child_specs(topology: Topology, instance: Instance, settings: Settings) -> list[ChildSpec]:
    """The processes of one instance: a plain app and its sidecar, or an SDK service alone."""
    app_flags = ["--host", HOST, "--port", str(instance.app_port), "--instance-id", instance.name]
    if instance.sidecar is None:
        path = topology.config_path(instance.name)
        config = _sdk_config(topology, instance, settings)
        argv = (settings.python, "-m", f"meshlet_shop.{instance.service}", *app_flags)
        return [ChildSpec(instance.name, argv, {"MESHLET_CONFIG": str(path)}, path, config)]
    faults = ["--faults-file", str(topology.faults_file(instance.name))]
    app = ChildSpec(instance.name, (settings.python, "-m", f"meshlet_shop.{instance.service}", *app_flags, *faults), {})
    path = topology.config_path(f"sidecar-{instance.name}")
    sidecar = ChildSpec(
        f"sidecar-{instance.name}",
        (settings.python, "-m", "meshlet_sidecar", "--config", str(path)),
        {},
        path,
        _sidecar_config(topology, instance, settings),
    )
    return [app, sidecar]


# The services the edge serves over HTTP/JSON, routed by their google.api.http annotations.
EDGE_SERVICES = {
    "shop.gateway.v1.Gateway": "gateway",
    "shop.orders.v1.Orders": "orders",
    "shop.inventory.v1.Inventory": "inventory",
    "shop.inventory.v2.Inventory": "inventory",
}
CACHED_READ = "/shop.inventory.v2.Inventory/GetItem"  # an item's stock: public, read on every visit
CACHE_TTL_S = 2


def edge_policies(store: str) -> dict[str, Any]:
    """The edge's limits and cache, in `store` (memory, or a Redis URL). Every caller of the demo is 127.0.0.1, so
    one consumer on the default plan: 5,000 requests a second is past what one edge process serves (about 1,000),
    so the plan never refuses the demo's traffic, and a curl still shows the RateLimit-* headers. The stock read is
    cached publicly for a short while (a product page may be 2 s behind; the reservation checks the real stock);
    a write to inventory through the edge drops it at once."""
    return {
        "plans": {"default": {"rate_per_s": 5000, "burst": 5000}},
        "limits": {"store": store, "on_store_error": "open"},
        "cache": {
            "store": store,
            "routes": [
                {
                    "match": CACHED_READ,
                    "ttl": f"{CACHE_TTL_S}s",
                    "public": True,
                    "invalidate": ["/shop.inventory.v1.Inventory/*", "/shop.inventory.v2.Inventory/*"],
                }
            ],
        },
    }


def edge_spec(topology: Topology, settings: Settings, descriptor_set: Path) -> ChildSpec:
    """meshlet-edge in front of the shop, a caller in the mesh like the traffic driver (mTLS from the Connect
    CA), its routes from the shop's descriptor set (`descriptor_set`, shipped in meshlet_shop_api)."""
    assert topology.edge is not None
    path = topology.config_path("edge")
    config = {
        "service": {"name": "edge", **_SERVICE_DEFAULTS},
        "consul": {"address": settings.consul_address},
        "tls": {"source": "consul"},
        "edge": {
            "listen": f"{HOST}:{topology.edge.listen}",
            "admin": f"{HOST}:{topology.edge.admin}",
            "services": EDGE_SERVICES,
            "descriptor_sets": [str(descriptor_set)],
            **edge_policies(settings.edge_store),
        },
        "upstream_defaults": _UPSTREAM_DEFAULTS,
        "telemetry": _telemetry(topology, "edge", "edge", settings),
    }
    return ChildSpec("edge", (settings.python, "-m", "meshlet_edge", "--config", str(path)), {}, path, config)


def agent_spec(python: str, port: int) -> ChildSpec:
    return ChildSpec("dev-agent", (python, "-m", "meshlet.cli", "dev-agent", "--http-addr", f"{HOST}:{port}"), {})


def client_config(topology: Topology, settings: Settings) -> dict[str, Any]:
    """The traffic driver's own mesh: a caller of gateway with mTLS, and no retries of its own, so that what it
    counts is what the gateway answered."""
    return {
        "service": {"name": CLIENT_SERVICE},
        "consul": {"address": settings.consul_address},
        "tls": {"source": "consul"},
        "upstreams": {"gateway": {"timeout": "2s", "retry": {"max_attempts": 1}}},
        "telemetry": _telemetry(topology, CLIENT_SERVICE, CLIENT_SERVICE, settings),
    }


def child_environment(parent: Mapping[str, str], settings: Settings, extra: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without its MESHLET_* settings (the demo's config files must win) but with its
    MESHLET_LOOP (how a process runs, not the mesh's config), with Consul's address, the OTLP endpoint when one
    is set, unbuffered output, and `extra`."""
    env = {k: v for k, v in parent.items() if not k.upper().startswith("MESHLET_") or k == "MESHLET_LOOP"}
    env.pop("OTEL_SERVICE_NAME", None)  # each child names itself
    env["CONSUL_HTTP_ADDR"] = settings.consul_address
    env["PYTHONUNBUFFERED"] = "1"
    if settings.otlp_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = settings.otlp_endpoint
    env.update(extra)
    return env


def _sdk_config(topology: Topology, instance: Instance, settings: Settings) -> dict[str, Any]:
    upstreams: dict[str, Any] = {"orders": {}} if instance.service == "gateway" else {"inventory": {}, "payments": {}}
    telemetry = _telemetry(topology, instance.name, instance.service, settings)
    telemetry["metrics_port"] = instance.metrics_port
    return {
        "service": {"name": instance.service, **_SERVICE_DEFAULTS},
        "consul": {"address": settings.consul_address},
        "tls": {"source": "consul"},
        "upstream_defaults": _UPSTREAM_DEFAULTS,
        "upstreams": upstreams,
        "telemetry": telemetry,
    }


def _sidecar_config(topology: Topology, instance: Instance, settings: Settings) -> dict[str, Any]:
    assert instance.sidecar is not None
    ports = instance.sidecar
    return {
        "service": {"name": instance.service, "meta": {"instance": instance.name}, **_SERVICE_DEFAULTS},
        "consul": {"address": settings.consul_address},
        "tls": {"source": "consul"},
        "sidecar": {
            "app": f"{HOST}:{instance.app_port}",
            "inbound": f"{HOST}:{ports.inbound}",
            "outbound": f"{HOST}:{ports.outbound}",
            "admin": f"{HOST}:{ports.admin}",
        },
        "telemetry": _telemetry(topology, f"sidecar-{instance.name}", instance.service, settings),
    }


def _telemetry(topology: Topology, name: str, service: str, settings: Settings) -> dict[str, Any]:
    telemetry: dict[str, Any] = {"service_name": service}
    if settings.otlp_endpoint:
        telemetry["otlp_endpoint"] = settings.otlp_endpoint
    if settings.span_files:
        telemetry["span_file"] = str(topology.span_file(name))
    return telemetry
