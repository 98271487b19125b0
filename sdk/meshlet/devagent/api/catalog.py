"""Consul's ``/v1/catalog`` endpoints: register and deregister external nodes, services and checks, and
read nodes, services and a node's services as blocking queries.

Catalog writes are Consul RPCs, so their refusals are 500s with the state store's text, not 400s; only
an undecodable body is a 400.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from meshlet.devagent.api.agent import CHECK_TYPE, PROXY, SERVICE_ADDRESS, meta_problem
from meshlet.devagent.api.common import (
    AGENT,
    ConsulError,
    apply_filter,
    block,
    json_response,
    query_options,
    read_json,
    set_meta,
)
from meshlet.devagent.api.health import has_meta, has_tags, requested_node_meta, requested_tags
from meshlet.devagent.catalog import CatalogError
from meshlet.devagent.catalog_records import (
    CRITICAL,
    STATUSES,
    Check,
    CheckDefinition,
    Node,
    Service,
    node_json,
    node_service,
    service_node,
)
from meshlet.devagent.decode import Field

DEFINITION_FIELDS = (
    "HTTP",
    "TLSServerName",
    "TLSSkipVerify",
    "Header",
    "Method",
    "Body",
    "DisableRedirects",
    "TCP",
    "TCPUseTLS",
    "UDP",
    "H2PING",
    "H2PingUseTLS",
    "OSService",
    "Interval",
    "OutputMaxSize",
    "Timeout",
    "DeregisterCriticalServiceAfter",
    "ScriptArgs",
    "DockerContainerID",
    "Shell",
    "GRPC",
    "GRPCUseTLS",
    "AliasNode",
    "AliasService",
    "TTL",
)
HEALTH_CHECK_DEFINITION: dict[str, Field] = {name: CHECK_TYPE[name] for name in DEFINITION_FIELDS}
HEALTH_CHECK: dict[str, Field] = {
    **{
        name: Field("str")
        for name in ["Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName", "Type"]
    },
    **{name: Field("str") for name in ("Interval", "Timeout", "PeerName")},
    "ServiceTags": Field("list", items="str"),
    "ExposedPort": Field("int"),
    "Definition": Field("object", schema=HEALTH_CHECK_DEFINITION),
    "CreateIndex": Field("int"),
    "ModifyIndex": Field("int"),
}
NODE_SERVICE: dict[str, Field] = {
    **{name: Field("str") for name in ("Kind", "ID", "Service", "Address", "SocketPath", "PeerName")},
    "Tags": Field("list", items="str"),
    "TaggedAddresses": Field("map", items="object", schema=SERVICE_ADDRESS),
    "Meta": Field("map", items="str"),
    "Port": Field("int"),
    "Weights": Field("object", schema={"Passing": Field("int"), "Warning": Field("int")}),
    "EnableTagOverride": Field("bool"),
    "Proxy": Field("object", schema=PROXY),
    "Connect": Field("object", schema={"Native": Field("bool"), "SidecarService": Field("any")}),
    "Locality": Field("object", schema={"Region": Field("str"), "Zone": Field("str")}),
    "CreateIndex": Field("int"),
    "ModifyIndex": Field("int"),
}
REGISTER: dict[str, Field] = {
    **{name: Field("str") for name in ("ID", "Node", "Address", "Datacenter", "Token", "PeerName")},
    "TaggedAddresses": Field("map", items="str"),
    "NodeMeta": Field("map", items="str"),
    "Service": Field("object", schema=NODE_SERVICE),
    "Check": Field("object", schema=HEALTH_CHECK),
    "Checks": Field("list", items="object", schema=HEALTH_CHECK),
    "SkipNodeUpdate": Field("bool"),
    "Locality": Field("object", schema={"Region": Field("str"), "Zone": Field("str")}),
}
DEREGISTER: dict[str, Field] = {
    name: Field("str") for name in ("Node", "Datacenter", "ServiceID", "CheckID", "Token", "PeerName")
}


def add_routes(app: web.Application) -> None:
    """Register this section's routes."""
    app.router.add_put("/v1/catalog/register", register)
    app.router.add_put("/v1/catalog/deregister", deregister)
    app.router.add_get("/v1/catalog/datacenters", datacenters, allow_head=False)
    app.router.add_get("/v1/catalog/nodes", nodes, allow_head=False)
    app.router.add_get("/v1/catalog/services", services, allow_head=False)
    app.router.add_get("/v1/catalog/service/{service:.*}", service_instances, allow_head=False)
    app.router.add_get("/v1/catalog/node/{node:.*}", node_detail, allow_head=False)


# ------------------------------------------------------------------------------------------ writes


async def register(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    body = await read_json(request, REGISTER)
    check_datacenter(body, agent.config.datacenter)
    node_name = body.get("Node", "")
    if not node_name:
        raise ConsulError(500, "Must provide node")
    node_id = body.get("ID", "")
    if node_id:
        try:
            uuid.UUID(node_id)
        except ValueError:
            raise ConsulError(500, f"Bad node ID: uuid string is wrong length: {node_id}") from None
    catalog = agent.state.catalog
    node = None
    if not body.get("SkipNodeUpdate", False):
        if not body.get("Address"):
            raise ConsulError(500, "Must provide address if SkipNodeUpdate is not set")
        existing = catalog.get_node(node_name)
        node = Node(
            name=existing.name if existing else node_name,
            id=node_id or (existing.id if existing else ""),
            address=body["Address"],
            datacenter=agent.config.datacenter,
            tagged_addresses=dict(body.get("TaggedAddresses", {})),
            meta=dict(body.get("NodeMeta", {})),
        )
    service = registered_service(body["Service"]) if "Service" in body else None
    raw_checks = ([body["Check"]] if "Check" in body else []) + body.get("Checks", [])
    checks = [registered_check(fields, node_name) for fields in raw_checks]
    try:
        catalog.catalog_register(node, node.name if node else node_name, service, checks)
    except CatalogError as exc:
        raise ConsulError(500, str(exc)) from None
    return json_response(True)


async def deregister(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    body = await read_json(request, DEREGISTER)
    check_datacenter(body, agent.config.datacenter)
    if not body.get("Node"):
        raise ConsulError(500, "Must provide node")
    agent.state.catalog.catalog_deregister(body["Node"], body.get("ServiceID", ""), body.get("CheckID", ""))
    return json_response(True)


def registered_service(fields: dict[str, Any]) -> Service:
    name = fields.get("Service", "")
    if not name:
        raise ConsulError(500, "Must provide service name with ID")
    if fields.get("Address", "") in ("0.0.0.0", "::", "[::]"):
        raise ConsulError(500, "Invalid service address")
    problem = meta_problem(fields.get("Meta", {}))
    if problem:
        raise ConsulError(500, f"Invalid service meta: {problem}")
    weights = fields.get("Weights", {"Passing": 1, "Warning": 1})
    return Service(
        id=fields.get("ID") or name,
        name=name,
        tags=list(fields.get("Tags", [])),
        address=fields.get("Address", ""),
        port=fields.get("Port", 0),
        meta=dict(fields.get("Meta", {})),
        tagged_addresses={
            key: {"Address": value.get("Address", ""), "Port": value.get("Port", 0)}
            for key, value in fields.get("TaggedAddresses", {}).items()
        },
        weights={"Passing": weights.get("Passing", 0), "Warning": weights.get("Warning", 0)},
        enable_tag_override=fields.get("EnableTagOverride", False),
        kind=fields.get("Kind", ""),
        socket_path=fields.get("SocketPath", ""),
        proxy=fields.get("Proxy", {}),
        connect_native=fields.get("Connect", {}).get("Native", False),
        locality=fields.get("Locality"),
    )


def registered_check(fields: dict[str, Any], node_name: str) -> Check:
    check_id = fields.get("CheckID") or fields.get("Name", "")
    if not check_id:
        raise ConsulError(500, "Missing check ID")
    if fields.get("Node", node_name).lower() != node_name.lower():
        raise ConsulError(500, f"Check node {fields['Node']!r} does not match node {node_name!r}")
    status = fields.get("Status") or CRITICAL
    if status not in STATUSES:
        raise ConsulError(500, f"Check status must be one of passing, warning or critical, not {status!r}")
    definition = fields.get("Definition", {})
    header = {key: [str(item) for item in items] for key, items in definition.get("Header", {}).items()}
    return Check(
        id=check_id,
        name=fields.get("Name", ""),
        status=status,
        notes=fields.get("Notes", ""),
        output=fields.get("Output", ""),
        service_id=fields.get("ServiceID", ""),
        type=fields.get("Type", ""),
        interval=fields.get("Interval", ""),
        timeout=fields.get("Timeout", ""),
        definition=CheckDefinition(
            interval_s=definition.get("Interval", 0.0),
            timeout_s=definition.get("Timeout", 0.0),
            ttl_s=definition.get("TTL", 0.0),
            deregister_after_s=definition.get("DeregisterCriticalServiceAfter", 0.0),
            http=definition.get("HTTP", ""),
            header=header,
            method=definition.get("Method", ""),
            body=definition.get("Body", ""),
            tcp=definition.get("TCP", ""),
            grpc=definition.get("GRPC", ""),
            grpc_use_tls=definition.get("GRPCUseTLS", False),
            tls_server_name=definition.get("TLSServerName", ""),
            tls_skip_verify=definition.get("TLSSkipVerify", False),
        ),
    )


def check_datacenter(body: dict[str, Any], datacenter: str) -> None:
    if body.get("Datacenter", datacenter) not in ("", datacenter):
        raise ConsulError(500, "No path to datacenter")


# ------------------------------------------------------------------------------------------ reads


async def datacenters(request: web.Request) -> web.StreamResponse:
    return json_response([request.app[AGENT].config.datacenter])


async def nodes(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    options = query_options(request, agent.config.datacenter)
    node_meta = requested_node_meta(request)
    apply_filter([], options.filter)
    catalog = agent.state.catalog
    index = await block(agent.changes, options, lambda: catalog.table_index("nodes"))
    rendered = [node_json(node) for node in catalog.nodes() if has_meta(node, node_meta)]
    return set_meta(json_response(apply_filter(rendered, options.filter)), index)


async def services(request: web.Request) -> web.StreamResponse:
    """Each service name with the union of its instances' tags; ``?filter=`` and ``?node-meta=`` select
    the instances that count."""
    agent = request.app[AGENT]
    options = query_options(request, agent.config.datacenter)
    node_meta = requested_node_meta(request)
    apply_filter([], options.filter)
    catalog = agent.state.catalog
    index = await block(agent.changes, options, lambda: catalog.table_index("nodes", "services"))
    if not node_meta and not options.filter:
        return set_meta(json_response(catalog.service_tags()), index)
    instances = [
        service_node(node, service)
        for node in catalog.nodes()
        if has_meta(node, node_meta)
        for service in catalog.node_services(node.name)
    ]
    tags: dict[str, set[str]] = {}
    for instance in apply_filter(instances, options.filter):
        tags.setdefault(instance["ServiceName"], set()).update(instance["ServiceTags"])
    return set_meta(json_response({name: sorted(tags[name]) for name in sorted(tags)}), index)


async def service_instances(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    options = query_options(request, agent.config.datacenter)
    name = request.match_info["service"]
    if not name:
        raise ConsulError(400, "Missing service name")
    tags = requested_tags(request)
    node_meta = requested_node_meta(request)
    apply_filter([], options.filter)
    catalog = agent.state.catalog
    index = await block(agent.changes, options, lambda: catalog.service_index(name))
    rendered = [
        service_node(node, service)
        for node, service in catalog.instances(name)
        if has_tags(service, tags) and has_meta(node, node_meta)
    ]
    return set_meta(json_response(apply_filter(rendered, options.filter)), index)


async def node_detail(request: web.Request) -> web.StreamResponse:
    """A node and its services by ID; an unknown node is ``null`` with a 200, as in Consul."""
    agent = request.app[AGENT]
    options = query_options(request, agent.config.datacenter)
    name = request.match_info["node"]
    if not name:
        raise ConsulError(400, "Missing node name")
    apply_filter([], options.filter)
    catalog = agent.state.catalog
    index = await block(agent.changes, options, lambda: catalog.table_index("nodes", "services"))
    node = catalog.get_node(name)
    if node is None:
        return set_meta(json_response(None), index)
    rendered = apply_filter([node_service(s) for s in catalog.node_services(node.name)], options.filter)
    return set_meta(json_response({"Node": node_json(node), "Services": {s["ID"]: s for s in rendered}}), index)
