"""``meshlet demo``: what runs with nothing installed.

For now it shows the discovery loop the mesh is built on: the embedded dev agent starts, a gRPC service
registers with a GRPC health check, the agent probes it until it turns healthy, a watcher on a Consul blocking
query discovers it, a call through ``mesh.channel`` reaches it, and on deregistration it disappears again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import consul.aio
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from rich.console import Console

from meshlet.config import load_config
from meshlet.devagent.server import AgentConfig, DevAgent
from meshlet.mesh import Mesh
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc

SERVICE = "echo"


class _Echo(echo_pb2_grpc.EchoServicer):
    async def Echo(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoReply:  # noqa: N802
        return echo_pb2.EchoReply(message=request.message, served_by="echo-1")


async def _watch(client: consul.aio.Consul, seen: Callable[[list[dict[str, Any]]], Awaitable[bool]]) -> None:
    """Follow /v1/health/service/echo?passing with blocking queries until `seen` says stop."""
    index = None
    while True:
        index, nodes = await client.health.service(SERVICE, index=index, wait="5s", passing=True)
        if await seen(nodes):
            return


async def run_demo(host: str = "127.0.0.1", port: int = 0) -> int:
    console = Console()
    started = time.monotonic()

    def say(text: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:6.2f}s[/dim]  {text}")

    agent = DevAgent(AgentConfig(http_host=host, http_port=port, node="demo"))
    address = await agent.start()
    say(f"[bold]dev agent[/bold] listening on http://{address} (Consul's HTTP API)")

    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    echo_pb2_grpc.add_EchoServicer_to_server(_Echo(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    say(f"[bold]echo[/bold] gRPC server on 127.0.0.1:{grpc_port}, reporting NOT_SERVING while it warms up")

    agent_host, agent_port = address.rsplit(":", 1)
    client = consul.aio.Consul(host=agent_host, port=int(agent_port))
    try:
        await client.agent.service.register(
            SERVICE,
            service_id="echo-1",
            address="127.0.0.1",
            port=grpc_port,
            check=consul.Check.grpc(f"127.0.0.1:{grpc_port}", "1s", timeout="1s"),
        )
        say("registered [bold]echo-1[/bold] with a GRPC health check every 1s; it starts critical")

        async def became_healthy(nodes: list[dict[str, Any]]) -> bool:
            if not nodes:
                say("watcher: no passing instance of echo yet")
                return False
            service = nodes[0]["Service"]
            say(f"watcher: discovered [green]{service['ID']}[/green] at {service['Address']}:{service['Port']}")
            return True

        watcher = asyncio.create_task(_watch(client, became_healthy))
        await asyncio.sleep(1.5)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        say("echo now reports SERVING; the agent's next probe marks it passing")
        await asyncio.wait_for(watcher, 15)

        async with Mesh(load_config(None, env={"CONSUL_HTTP_ADDR": f"http://{address}"})) as mesh:
            stub = echo_pb2_grpc.EchoStub(mesh.channel(SERVICE))
            reply = await stub.Echo(echo_pb2.EchoRequest(message="hello"), timeout=2)
            say(f"called echo through mesh.channel('echo'): {reply.message!r} from {reply.served_by}")

        async def vanished(nodes: list[dict[str, Any]]) -> bool:
            return not nodes

        watcher = asyncio.create_task(_watch(client, vanished))
        await client.agent.service.deregister("echo-1")
        await asyncio.wait_for(watcher, 15)
        say("deregistered echo-1; the watcher saw it leave")
        console.print("[bold green]demo finished[/bold green]: register -> healthy -> discovered -> called -> gone")
        return 0
    except TimeoutError:
        console.print("[bold red]demo failed[/bold red]: the service never turned healthy within 15s")
        return 1
    finally:
        await client.close()
        await server.stop(grace=None)
        await agent.stop()
