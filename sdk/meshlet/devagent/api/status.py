"""Who the agent is: ``/v1/status/leader`` and ``/peers``, ``/v1/agent/self`` and ``/members``, and the
root page Consul serves with its UI off.

The dev agent is a single server that leads itself, so it reports itself as leader and only peer, at the
server RPC address a ``consul agent -dev`` would advertise (port 8300). Clients probe these endpoints to
see that an agent is up and which version it runs.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshlet.devagent.api.common import AGENT, ConsulError, json_response
from meshlet.devagent.catalog_records import CONSUL_VERSION

if TYPE_CHECKING:
    from meshlet.devagent.server import DevAgent

REVISION = "meshlet-dev-agent"  # where Consul puts its git commit, so tools can tell this agent apart
BUILD_DATE = "2025-11-01T00:00:00Z"
SERVER_PORT = 8300  # Consul's server RPC port: what status/leader and peers report
SERF_LAN_PORT = 8301
SERF_WAN_PORT = 8302
UI_DISABLED = "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent configuration and restart."


def add_routes(app: web.Application) -> None:
    """Register this section's routes."""
    app.router.add_route("*", "/", index_page)
    app.router.add_get("/v1/status/leader", leader, allow_head=False)
    app.router.add_get("/v1/status/peers", peers, allow_head=False)
    app.router.add_get("/v1/agent/self", agent_self, allow_head=False)
    app.router.add_get("/v1/agent/members", members, allow_head=False)


# ------------------------------------------------------------------------------------------ handlers


async def index_page(request: web.Request) -> web.StreamResponse:
    return web.Response(text=UI_DISABLED, content_type="text/plain")


async def leader(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    check_datacenter(request, agent)
    return json_response(server_address(agent))


async def peers(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    check_datacenter(request, agent)
    return json_response([server_address(agent)])


async def agent_self(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    return json_response(
        {
            "Config": {
                "Datacenter": agent.config.datacenter,
                "PrimaryDatacenter": agent.config.datacenter,
                "NodeName": agent.config.node,
                "NodeID": agent.state.node_id,
                "Revision": REVISION,
                "Server": True,
                "Version": CONSUL_VERSION,
                "BuildDate": BUILD_DATE,
            },
            "DebugConfig": debug_config(agent),
            "Coord": {"Vec": [0] * 8, "Error": 1.5, "Adjustment": 0, "Height": 1e-05},
            "Member": member(agent, wan=False),
            "Stats": stats(agent),
            "Meta": {"consul-network-segment": "", "consul-version": CONSUL_VERSION},
        }
    )


async def members(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    wan = bool(request.query.get("wan"))  # as in Consul, any non-empty value asks for the WAN pool
    return json_response([member(agent, wan=wan)])


# ------------------------------------------------------------------------------------------ rendering


def check_datacenter(request: web.Request, agent: DevAgent) -> None:
    dc = request.query.get("dc") or agent.config.datacenter
    if dc != agent.config.datacenter:
        raise ConsulError(500, "No path to datacenter")


def advertise_host(agent: DevAgent) -> str:
    """The address this agent advertises: its HTTP host, or loopback when it listens on every interface."""
    host = agent.config.http_host
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def server_address(agent: DevAgent) -> str:
    host = advertise_host(agent)
    return f"[{host}]:{SERVER_PORT}" if ":" in host else f"{host}:{SERVER_PORT}"


def member(agent: DevAgent, *, wan: bool) -> dict[str, Any]:
    """This agent as a serf member: a bootstrapped server of its datacenter, alive (Status 1)."""
    name = f"{agent.config.node}.{agent.config.datacenter}" if wan else agent.config.node
    return {
        "Name": name,
        "Addr": advertise_host(agent),
        "Port": SERF_WAN_PORT if wan else SERF_LAN_PORT,
        "Tags": {
            "acls": "0",
            "bootstrap": "1",
            "build": f"{CONSUL_VERSION}:{REVISION}",
            "dc": agent.config.datacenter,
            "ft_fs": "1",
            "ft_si": "1",
            "id": agent.state.node_id,
            "port": str(SERVER_PORT),
            "raft_vsn": "3",
            "role": "consul",
            "segment": "",
            "vsn": "2",
            "vsn_max": "3",
            "vsn_min": "2",
            "wan_join_port": str(SERF_WAN_PORT),
        },
        "Status": 1,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


def stats(agent: DevAgent) -> dict[str, dict[str, str]]:
    """The sections ``consul info`` prints, with what this agent can truthfully say in each."""
    index = str(agent.state.index.value)
    checks = agent.state.catalog.agent_checks()
    return {
        "agent": {
            "check_monitors": str(sum(1 for check in checks if check.type == "script")),
            "check_ttls": str(sum(1 for check in checks if check.type == "ttl")),
            "checks": str(len(checks)),
            "services": str(len(agent.state.catalog.agent_services())),
        },
        "build": {"prerelease": "", "revision": REVISION, "version": CONSUL_VERSION, "version_metadata": ""},
        "consul": {
            "acl": "disabled",
            "bootstrap": "true",
            "known_datacenters": "1",
            "leader": "true",
            "leader_addr": server_address(agent),
            "server": "true",
        },
        "raft": {
            "applied_index": index,
            "commit_index": index,
            "last_log_index": index,
            "num_peers": "0",
            "state": "Leader",
        },
        "runtime": {
            "arch": platform.machine(),
            "cpu_count": str(os.cpu_count() or 1),
            "os": sys.platform,
            "version": f"python{platform.python_version()}",
        },
    }


def debug_config(agent: DevAgent) -> dict[str, Any]:
    """A small, honest subset of Consul's sanitized runtime configuration."""
    return {
        "Bootstrap": True,
        "Datacenter": agent.config.datacenter,
        "DataDir": str(agent.config.data_dir or ""),
        "DevMode": True,
        "HTTPAddrs": [f"tcp://{agent.address}"],
        "NodeID": agent.state.node_id,
        "NodeName": agent.config.node,
        "PrimaryDatacenter": agent.config.datacenter,
        "ServerMode": True,
        "UIConfig": {"Enabled": False},
        "Version": CONSUL_VERSION,
    }
