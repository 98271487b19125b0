"""The catalog's records (nodes, services, checks) and the JSON shapes Consul gives them on each endpoint.

Pure: the catalog stores these records; the HTTP layer renders them with the functions below, which
reproduce Consul's structs field for field (``AgentService``, ``NodeService``, ``ServiceNode``,
``HealthCheck``, ``Node``, ``CheckServiceNode``), including which fields are left out when empty.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from meshlet.devagent.decode import format_duration

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
STATUSES = (PASSING, WARNING, CRITICAL)
CONSUL_VERSION = "1.22.0"  # what the agent's node reports in its meta, as api/status.py reports it


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    id: str = ""
    address: str = ""
    datacenter: str = ""
    tagged_addresses: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0


@dataclass(frozen=True, slots=True)
class Service:
    """One service instance on one node. `local` marks the agent's own registrations."""

    id: str
    name: str
    node: str = ""
    tags: list[str] = field(default_factory=list)
    address: str = ""
    port: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    tagged_addresses: dict[str, dict[str, Any]] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    enable_tag_override: bool = False
    kind: str = ""
    socket_path: str = ""
    proxy: dict[str, Any] = field(default_factory=dict)
    connect_native: bool = False
    locality: dict[str, str] | None = None
    local: bool = False
    create_index: int = 0
    modify_index: int = 0


@dataclass(frozen=True, slots=True)
class CheckDefinition:
    """How a check is run (Consul's CheckType): durations in seconds, 0 when unset."""

    interval_s: float = 0.0
    timeout_s: float = 0.0
    ttl_s: float = 0.0
    deregister_after_s: float = 0.0
    http: str = ""
    header: dict[str, list[str]] = field(default_factory=dict)
    method: str = ""
    body: str = ""
    disable_redirects: bool = False
    tcp: str = ""
    tcp_use_tls: bool = False
    udp: str = ""
    grpc: str = ""
    grpc_use_tls: bool = False
    h2ping: str = ""
    h2ping_use_tls: bool = False
    tls_server_name: str = ""
    tls_skip_verify: bool = False
    os_service: str = ""
    alias_node: str = ""
    alias_service: str = ""
    docker_container_id: str = ""
    shell: str = ""
    script_args: list[str] = field(default_factory=list)
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0
    output_max_size: int = 0

    @property
    def type(self) -> str:
        """Consul's ``CheckType.Type()``, in its order of precedence."""
        interval = self.interval_s > 0
        kinds = (
            ("grpc", bool(self.grpc) and interval),
            ("http", bool(self.http) and interval),
            ("ttl", self.ttl_s > 0),
            ("tcp", bool(self.tcp) and interval),
            ("udp", bool(self.udp) and interval),
            ("alias", bool(self.alias_node or self.alias_service)),
            ("docker", bool(self.docker_container_id) and interval),
            ("script", bool(self.script_args) and interval),
            ("h2ping", bool(self.h2ping) and interval),
            ("os_service", bool(self.os_service) and interval),
        )
        return next((name for name, matches in kinds if matches), "")


@dataclass(frozen=True, slots=True)
class Check:
    """One health check, node-level when `service_id` is empty. `local` marks the agent's own checks."""

    id: str
    name: str
    status: str
    node: str = ""
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: list[str] = field(default_factory=list)
    type: str = ""
    interval: str = ""  # as shown: the agent's checks show Go's "0s" when unset, catalog ones what was sent
    timeout: str = ""
    definition: CheckDefinition = field(default_factory=CheckDefinition)
    local: bool = False
    create_index: int = 0
    modify_index: int = 0


def check_from_json(data: dict[str, Any]) -> Check:
    return Check(**{**data, "definition": CheckDefinition(**data["definition"])})


# ------------------------------------------------------------------------------------------ rendering

PROXY_KINDS = frozenset({"connect-proxy", "mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway"})


def agent_service(service: Service, datacenter: str, *, with_hash: bool = False) -> dict[str, Any]:
    """``/v1/agent/services`` values (Consul's ``api.AgentService``); `with_hash` adds ``ContentHash``
    as ``/v1/agent/service/<id>`` does."""
    head: dict[str, Any] = {"Kind": service.kind} if service.kind else {}
    head |= {
        "ID": service.id,
        "Service": service.name,
        "Tags": list(service.tags),
        "Meta": dict(service.meta),
        "Port": service.port,
        "Address": service.address,
    }
    if service.socket_path:
        head["SocketPath"] = service.socket_path
    if service.tagged_addresses:
        head["TaggedAddresses"] = dict(service.tagged_addresses)
    head |= {"Weights": dict(service.weights), "EnableTagOverride": service.enable_tag_override}
    tail: dict[str, Any] = {}
    if service.kind in PROXY_KINDS:
        tail["Proxy"] = proxy_json(service.proxy, agent=True)
    if service.connect_native:
        tail["Connect"] = {"Native": True}
    tail["Datacenter"] = datacenter
    if service.locality:
        tail["Locality"] = dict(service.locality)
    if with_hash:
        return head | {"ContentHash": content_hash(head | tail)} | tail
    return head | tail


def content_hash(rendered: dict[str, Any]) -> str:
    """A stable 16-hex-digit digest of a rendered service, for hash-based blocking."""
    digest = hashlib.sha256(json.dumps(rendered, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def node_service(service: Service) -> dict[str, Any]:
    """The ``Service`` of a health entry and the values of ``/v1/catalog/node``: Consul's ``NodeService``,
    whose ``Port`` is left out when 0 and whose ``Proxy`` and ``Connect`` are always there."""
    out: dict[str, Any] = {"Kind": service.kind} if service.kind else {}
    out |= {"ID": service.id, "Service": service.name, "Tags": list(service.tags), "Address": service.address}
    if service.tagged_addresses:
        out["TaggedAddresses"] = dict(service.tagged_addresses)
    out["Meta"] = dict(service.meta)
    if service.port:
        out["Port"] = service.port
    if service.socket_path:
        out["SocketPath"] = service.socket_path
    out |= {"Weights": dict(service.weights), "EnableTagOverride": service.enable_tag_override}
    if service.locality:
        out["Locality"] = dict(service.locality)
    return out | {
        "Proxy": proxy_json(service.proxy),
        "Connect": {"Native": True} if service.connect_native else {},
        "PeerName": "",
        "CreateIndex": service.create_index,
        "ModifyIndex": service.modify_index,
    }


def service_node(node: Node, service: Service) -> dict[str, Any]:
    """``/v1/catalog/service/<name>`` elements: Consul's flattened ``ServiceNode``."""
    out: dict[str, Any] = {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": dict(node.tagged_addresses),
        "NodeMeta": dict(node.meta),
        "ServiceKind": service.kind,
        "ServiceID": service.id,
        "ServiceName": service.name,
        "ServiceTags": list(service.tags),
        "ServiceAddress": service.address,
    }
    if service.tagged_addresses:
        out["ServiceTaggedAddresses"] = dict(service.tagged_addresses)
    out |= {
        "ServiceWeights": dict(service.weights),
        "ServiceMeta": dict(service.meta),
        "ServicePort": service.port,
        "ServiceSocketPath": service.socket_path,
        "ServiceEnableTagOverride": service.enable_tag_override,
        "ServiceProxy": proxy_json(service.proxy),
        "ServiceConnect": {"Native": True} if service.connect_native else {},
    }
    if service.locality:
        out["ServiceLocality"] = dict(service.locality)
    return out | {"CreateIndex": service.create_index, "ModifyIndex": service.modify_index}


def node_json(node: Node) -> dict[str, Any]:
    return {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": dict(node.tagged_addresses),
        "Meta": dict(node.meta),
        "CreateIndex": node.create_index,
        "ModifyIndex": node.modify_index,
    }


def health_check(check: Check, *, indexes: bool = True) -> dict[str, Any]:
    """Consul's ``HealthCheck``. The agent's own listing has no Raft indexes (`indexes=False` shows 0s)."""
    return {
        "Node": check.node,
        "CheckID": check.id,
        "Name": check.name,
        "Status": check.status,
        "Notes": check.notes,
        "Output": check.output,
        "ServiceID": check.service_id,
        "ServiceName": check.service_name,
        "ServiceTags": list(check.service_tags),
        "Type": check.type,
        "Interval": check.interval,
        "Timeout": check.timeout,
        "ExposedPort": 0,
        "Definition": definition_json(check.definition),
        "CreateIndex": check.create_index if indexes else 0,
        "ModifyIndex": check.modify_index if indexes else 0,
    }


def check_service_node(node: Node, service: Service, checks: list[Check]) -> dict[str, Any]:
    """``/v1/health/service/<name>`` elements: Consul's ``CheckServiceNode``."""
    return {"Node": node_json(node), "Service": node_service(service), "Checks": [health_check(c) for c in checks]}


def definition_json(definition: CheckDefinition) -> dict[str, Any]:
    """Consul's ``HealthCheckDefinition``: every field left out when empty, durations as Go strings."""
    fields: list[tuple[str, Any]] = [
        ("HTTP", definition.http),
        ("TLSServerName", definition.tls_server_name),
        ("TLSSkipVerify", definition.tls_skip_verify),
        ("Header", definition.header),
        ("Method", definition.method),
        ("Body", definition.body),
        ("DisableRedirects", definition.disable_redirects),
        ("TCP", definition.tcp),
        ("TCPUseTLS", definition.tcp_use_tls),
        ("UDP", definition.udp),
        ("H2PING", definition.h2ping),
        ("H2PingUseTLS", definition.h2ping_use_tls),
        ("OSService", definition.os_service),
        ("Interval", _duration(definition.interval_s)),
        ("OutputMaxSize", definition.output_max_size),
        ("Timeout", _duration(definition.timeout_s)),
        ("DeregisterCriticalServiceAfter", _duration(definition.deregister_after_s)),
        ("ScriptArgs", definition.script_args),
        ("DockerContainerID", definition.docker_container_id),
        ("Shell", definition.shell),
        ("GRPC", definition.grpc),
        ("GRPCUseTLS", definition.grpc_use_tls),
        ("AliasNode", definition.alias_node),
        ("AliasService", definition.alias_service),
        ("TTL", _duration(definition.ttl_s)),
    ]
    return {name: value for name, value in fields if value}


def proxy_json(proxy: dict[str, Any], *, agent: bool = False) -> dict[str, Any]:
    """Consul's ``ConnectProxyConfig``: optional fields only when set, but ``Mode``, ``MeshGateway`` and
    ``Expose`` always (the agent's own listing leaves an empty ``Mode`` out too)."""
    out = {name: proxy[name] for name in ("TransparentProxy", "AccessLogs") if proxy.get(name)}
    for name in (
        "EnvoyExtensions",
        "DestinationServiceName",
        "DestinationServiceID",
        "LocalServiceAddress",
        "LocalServicePort",
        "LocalServiceSocketPath",
    ):
        if proxy.get(name):
            out[name] = proxy[name]
    if proxy.get("Mode") or not agent:
        out["Mode"] = proxy.get("Mode", "")
    out |= {name: proxy[name] for name in ("Config", "Upstreams") if proxy.get(name)}
    return out | {"MeshGateway": proxy.get("MeshGateway") or {}, "Expose": proxy.get("Expose") or {}}


def _duration(seconds: float) -> str:
    return format_duration(seconds) if seconds else ""
