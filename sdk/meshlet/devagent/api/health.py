"""Consul's ``/v1/health`` endpoints, the ones service discovery watches: instances of a service with their
node's and their own checks (``?passing``, ``?tag``, ``?node-meta``, ``?filter``), a service's checks,
checks by state and a node's checks, each a blocking query carrying ``X-Consul-Index``.

A service's answer moves only when its instances or their checks change, so a watcher of one service
sleeps through every other write; an unknown service answers ``[]``, never 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshlet.devagent.api.common import (
    AGENT,
    apply_filter,
    bad_request,
    block,
    cached_json_response,
    json_response,
    query_options,
    set_meta,
    strict_bool,
)
from meshlet.devagent.catalog_records import PASSING, Node, Service, check_service_node, health_check

if TYPE_CHECKING:
    from meshlet.devagent.server import DevAgent


def add_routes(app: web.Application) -> None:
    """Register this section's routes."""
    app.router.add_get("/v1/health/service/{service:.*}", service_instances, allow_head=False)
    app.router.add_get("/v1/health/checks/{service:.*}", service_checks, allow_head=False)
    app.router.add_get("/v1/health/state/{state:.*}", checks_in_state, allow_head=False)
    app.router.add_get("/v1/health/node/{node:.*}", node_checks, allow_head=False)


async def service_instances(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    options = query_options(request, agent.config.datacenter)
    name = request.match_info["service"]
    if not name:
        raise bad_request("Missing service name")
    passing = strict_bool(request, "passing") or False
    tags = requested_tags(request)
    node_meta = requested_node_meta(request)
    apply_filter([], options.filter)  # a bad expression fails now, not after the wait
    catalog = agent.state.catalog
    index = await block(agent.changes, options, lambda: catalog.service_index(name))

    def render() -> list[dict[str, Any]]:
        entries = [
            check_service_node(node, service, catalog.instance_checks(node.name, service.id))
            for node, service in catalog.instances(name)
            if has_tags(service, tags) and has_meta(node, node_meta)
        ]
        entries = apply_filter(entries, options.filter)
        return only_passing(entries) if passing else entries

    key = ("health/service", name.lower(), passing, tuple(tags), tuple(sorted(node_meta.items())), options.filter)
    return set_meta(cached_json_response(agent.renders, (*key, agent.state.index.value), render), index)


async def service_checks(request: web.Request) -> web.StreamResponse:
    """The checks of a service's instances, without node-level checks."""
    agent = request.app[AGENT]
    options = query_options(request, agent.config.datacenter)
    name = request.match_info["service"]
    if not name:
        raise bad_request("Missing service name")
    node_meta = requested_node_meta(request)
    apply_filter([], options.filter)
    catalog = agent.state.catalog
    index = await block(agent.changes, options, lambda: catalog.service_index(name))
    checks = [check for check in catalog.service_checks(name) if node_has_meta(agent, check.node, node_meta)]
    return set_meta(json_response(apply_filter([health_check(c) for c in checks], options.filter)), index)


async def checks_in_state(request: web.Request) -> web.StreamResponse:
    """``any``, ``passing``, ``warning`` or ``critical`` (another word matches nothing)."""
    agent = request.app[AGENT]
    options = query_options(request, agent.config.datacenter)
    state = request.match_info["state"]
    if not state:
        raise bad_request("Missing check state")
    node_meta = requested_node_meta(request)
    apply_filter([], options.filter)
    catalog = agent.state.catalog
    index = await block(agent.changes, options, lambda: catalog.table_index("checks"))
    checks = [check for check in catalog.checks_in_state(state) if node_has_meta(agent, check.node, node_meta)]
    return set_meta(json_response(apply_filter([health_check(c) for c in checks], options.filter)), index)


async def node_checks(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    options = query_options(request, agent.config.datacenter)
    node = request.match_info["node"]
    if not node:
        raise bad_request("Missing node name")
    apply_filter([], options.filter)
    catalog = agent.state.catalog
    index = await block(agent.changes, options, lambda: catalog.table_index("checks"))
    rendered = [health_check(check) for check in catalog.node_checks(node)]
    return set_meta(json_response(apply_filter(rendered, options.filter)), index)


# ------------------------------------------------------------------------------------------ selection


def only_passing(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``?passing``: drop every instance with any check not passing, node checks included (so a
    warning drops it too, and so does maintenance)."""
    return [entry for entry in entries if all(check["Status"] == PASSING for check in entry["Checks"])]


def requested_tags(request: web.Request) -> list[str]:
    """``?tag=`` may repeat: an instance must carry every one, compared case-insensitively."""
    return [tag.lower() for tag in request.query.getall("tag", [])]


def has_tags(service: Service, wanted: list[str]) -> bool:
    carried = {tag.lower() for tag in service.tags}
    return all(tag in carried for tag in wanted)


def requested_node_meta(request: web.Request) -> dict[str, str]:
    """``?node-meta=key:value`` may repeat; every pair must match the node's meta."""
    pairs = (item.partition(":") for item in request.query.getall("node-meta", []))
    return {key: value for key, _, value in pairs}


def has_meta(node: Node, wanted: dict[str, str]) -> bool:
    return all(node.meta.get(key) == value for key, value in wanted.items())


def node_has_meta(agent: DevAgent, node_name: str, wanted: dict[str, str]) -> bool:
    if not wanted:
        return True
    node = agent.state.catalog.get_node(node_name)
    return node is not None and has_meta(node, wanted)
