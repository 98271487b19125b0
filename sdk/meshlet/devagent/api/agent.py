"""Consul's ``/v1/agent`` service and check endpoints: register and deregister, TTL updates, maintenance,
the agent's own listings (with ``?filter=``), hash-blocking ``/v1/agent/service/<id>`` and the local health
summaries. Requests are decoded as strictly as Consul decodes them (case-insensitive keys, its snake_case
aliases, unknown keys refused) and refused with Consul's texts; `/v1/catalog/register` reuses the check
definition rules, which live in definitions.py (re-exported here).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshlet.devagent.api.common import (
    AGENT,
    ConsulError,
    apply_filter,
    bad_request,
    empty_response,
    json_response,
    not_found,
    read_json,
    strict_bool,
    wait_timeout,
)
from meshlet.devagent.api.definitions import (
    CHECK_DEFINITION,
    CHECK_UPDATE,
    SERVICE_DEFINITION,
    check_from_definition,
)
from meshlet.devagent.api.definitions import CHECK_TYPE as CHECK_TYPE
from meshlet.devagent.api.definitions import PROXY as PROXY
from meshlet.devagent.api.definitions import SERVICE_ADDRESS as SERVICE_ADDRESS
from meshlet.devagent.api.definitions import meta_problem as meta_problem
from meshlet.devagent.api.definitions import service_from_definition as service_from_definition
from meshlet.devagent.catalog_records import (
    CRITICAL,
    PASSING,
    STATUSES,
    WARNING,
    Service,
    agent_service,
    health_check,
)
from meshlet.devagent.decode import DurationError, parse_duration

if TYPE_CHECKING:
    from meshlet.devagent.server import DevAgent

TTL_VERBS = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}
HEALTH_CODES = {PASSING: 200, WARNING: 429}  # anything else (critical, maintenance) is 503


def add_routes(app: web.Application) -> None:
    """Register this section's routes."""
    router = app.router
    router.add_get("/v1/agent/services", list_services, allow_head=False)
    router.add_put("/v1/agent/service/register", register_service)
    router.add_put("/v1/agent/service/deregister/{service_id:.*}", deregister_service)
    router.add_put("/v1/agent/service/maintenance/{service_id:.*}", service_maintenance)
    # Consul's mux prefers the exact write paths, so a GET on them is a 405, not a lookup of a service ID.
    router.add_get(
        "/v1/agent/service/{service_id:(?!register$|deregister/|maintenance/).+}", get_service, allow_head=False
    )
    router.add_get("/v1/agent/checks", list_checks, allow_head=False)
    router.add_put("/v1/agent/check/register", register_check)
    router.add_put("/v1/agent/check/deregister/{check_id:.*}", deregister_check)
    router.add_put("/v1/agent/check/{verb:pass|warn|fail}/{check_id:.*}", ttl_verb)
    router.add_put("/v1/agent/check/update/{check_id:.*}", ttl_update)
    router.add_put("/v1/agent/maintenance", node_maintenance)
    router.add_get("/v1/agent/health/service/id/{service_id:.*}", health_by_id, allow_head=False)
    router.add_get("/v1/agent/health/service/name/{name:.*}", health_by_name, allow_head=False)


# ------------------------------------------------------------------------------------------ services


async def list_services(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    rendered = [agent_service(s, agent.config.datacenter) for s in agent.state.catalog.agent_services()]
    return json_response({item["ID"]: item for item in apply_filter(rendered, request.query.get("filter", ""))})


async def register_service(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    replace_existing = strict_bool(request, "replace-existing-checks") or False
    body = await read_json(request, SERVICE_DEFINITION)
    service, checks = service_from_definition(body)
    agent.state.catalog.register_service(service, checks, replace_existing_checks=replace_existing)
    return empty_response()


async def deregister_service(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    service_id = request.match_info["service_id"]
    if not agent.state.catalog.deregister_service(service_id):
        raise unknown_service(service_id)
    return empty_response()


async def get_service(request: web.Request) -> web.StreamResponse:
    """One local service with its ``ContentHash``; with ``?hash=`` it blocks until the hash differs."""
    agent = request.app[AGENT]
    service_id = request.match_info["service_id"]
    wait_s = 0.0
    if "wait" in request.query:
        try:
            wait_s = parse_duration(request.query["wait"])
        except DurationError:
            raise bad_request("Invalid wait time") from None
    rendered = render_local_service(agent, service_id)
    known_hash = request.query.get("hash", "")
    if known_hash and rendered["ContentHash"] == known_hash:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_timeout(wait_s)
        while rendered["ContentHash"] == known_hash and loop.time() < deadline and not agent.changes.closed:
            await agent.changes.wait(deadline - loop.time())
            rendered = render_local_service(agent, service_id)
    return json_response(rendered, headers={"X-Consul-ContentHash": rendered["ContentHash"]})


def render_local_service(agent: DevAgent, service_id: str) -> dict[str, Any]:
    service = agent.state.catalog.find_agent_service(service_id)
    if service is None:
        raise not_found(f"unknown service ID: {service_id}")
    return agent_service(service, agent.config.datacenter, with_hash=True)


async def service_maintenance(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    service_id = request.match_info["service_id"]
    enable = enable_param(request)
    if agent.state.catalog.find_agent_service(service_id) is None:
        raise unknown_service(service_id)
    agent.state.catalog.set_service_maintenance(service_id, enable, request.query.get("reason", ""))
    return empty_response()


async def node_maintenance(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    agent.state.catalog.set_node_maintenance(enable_param(request), request.query.get("reason", ""))
    return empty_response()


# ------------------------------------------------------------------------------------------ checks


async def list_checks(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    rendered = [health_check(c, indexes=False) for c in agent.state.catalog.agent_checks()]
    return json_response({item["CheckID"]: item for item in apply_filter(rendered, request.query.get("filter", ""))})


async def register_check(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    body = await read_json(request, CHECK_DEFINITION)
    check = check_from_definition(body)
    if check.service_id and agent.state.catalog.find_agent_service(check.service_id) is None:
        raise not_found(f"ServiceID {json.dumps(check.service_id)} does not exist")
    agent.state.catalog.register_check(check)
    return empty_response()


async def deregister_check(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    check_id = request.match_info["check_id"]
    if not agent.state.catalog.deregister_check(check_id):
        raise unknown_check(check_id)
    return empty_response()


async def ttl_verb(request: web.Request) -> web.StreamResponse:
    """``pass``, ``warn`` and ``fail``: the status the verb names, ``?note=`` as the output (empty if none)."""
    agent = request.app[AGENT]
    check_id = request.match_info["check_id"]
    update_ttl_check(agent, check_id, TTL_VERBS[request.match_info["verb"]], request.query.get("note", ""))
    return empty_response()


async def ttl_update(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    body = await read_json(request, CHECK_UPDATE)
    status = body.get("Status", "")
    if status not in STATUSES:
        raise bad_request(f"Invalid check status: '{status}'")
    update_ttl_check(agent, request.match_info["check_id"], status, body.get("Output", ""))
    return empty_response()


def update_ttl_check(agent: DevAgent, check_id: str, status: str, output: str) -> None:
    catalog = agent.state.catalog
    check = catalog.find_agent_check(check_id)
    if check is None:
        raise unknown_check(check_id)
    if check.definition.ttl_s <= 0:
        raise ConsulError(500, f"CheckID {json.dumps(check_id)} does not have associated TTL")
    catalog.update_ttl(check_id, status, output)


# ------------------------------------------------------------------------------------------ local health


async def health_by_id(request: web.Request) -> web.StreamResponse:
    """200 passing, 429 warning, 503 critical or maintenance, 404 unknown; ``?format=text`` gives the word."""
    agent = request.app[AGENT]
    service_id = request.match_info["service_id"]
    service = agent.state.catalog.find_agent_service(service_id)
    if service is None:
        reason = f"ServiceId {service_id} not found"
        if wants_text(request):
            return web.Response(status=404, text=reason, content_type="text/plain")
        return json_response({"AggregatedStatus": CRITICAL, "Service": None, "Checks": None}, status=404)
    info = health_info(agent, service)
    status = info["AggregatedStatus"]
    if wants_text(request):
        return web.Response(status=HEALTH_CODES.get(status, 503), text=status, content_type="text/plain")
    return json_response(info, status=HEALTH_CODES.get(status, 503))


async def health_by_name(request: web.Request) -> web.StreamResponse:
    """Every local instance of a service; the answer carries the worst status among them."""
    agent = request.app[AGENT]
    name = request.match_info["name"]
    infos = [health_info(agent, s) for s in agent.state.catalog.agent_services() if s.name == name]
    code, status = 404, f"ServiceName {name} Not Found"
    for info in infos:
        info_code = HEALTH_CODES.get(info["AggregatedStatus"], 503)
        if code == 404 or info_code > code:
            code, status = info_code, info["AggregatedStatus"]
    if wants_text(request):
        return web.Response(status=code, text=status, content_type="text/plain")
    return json_response(infos, status=code)


def health_info(agent: DevAgent, service: Service) -> dict[str, Any]:
    checks = agent.state.catalog.agent_service_checks(service.id)
    return {
        "AggregatedStatus": aggregated_status([c.id for c in checks], [c.status for c in checks]),
        "Service": agent_service(service, agent.config.datacenter),
        "Checks": [health_check(c, indexes=False) for c in checks],
    }


def aggregated_status(check_ids: list[str], statuses: list[str]) -> str:
    """Consul's ``HealthChecks.AggregatedStatus``: maintenance beats critical beats warning beats passing."""
    if any(cid == "_node_maintenance" or cid.startswith("_service_maintenance:") for cid in check_ids):
        return "maintenance"
    for status in (CRITICAL, WARNING):
        if status in statuses:
            return status
    return PASSING


def wants_text(request: web.Request) -> bool:
    if request.headers.get("Accept", "").startswith("text/plain"):
        return True
    return request.query.get("format", "") == "text"


# ------------------------------------------------------------------------------------------ helpers


def enable_param(request: web.Request) -> bool:
    if "enable" not in request.query:
        raise bad_request("Missing value for enable")
    value = request.query["enable"]
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise bad_request(f"Invalid value for enable: {json.dumps(value)}")


def unknown_service(service_id: str) -> ConsulError:
    return not_found(
        f"Unknown service ID {json.dumps(service_id)}. Ensure that the service ID is passed, not the service name."
    )


def unknown_check(check_id: str) -> ConsulError:
    return not_found(
        f"Unknown check ID {json.dumps(check_id)}. Ensure that the check ID is passed, not the check name."
    )
