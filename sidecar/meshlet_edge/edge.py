"""Edge: the HTTP listener in front of the mesh. Each request is matched in the route table, transcoded to the
method's message and sent through ``mesh.channel(upstream)``, the same outbound pipeline (discovery, balancing,
deadline, retries, breakers, mTLS, tracing, metrics) an SDK stub's call takes; the reply comes back as JSON, a
failure as the JSON form of its google.rpc.Status with the mapped HTTP status.

Start: routes (a bad descriptor or a conflict is a config error before anything listens) -> certificates ->
discovery of every upstream -> admin -> (with ``edge.reflection``: the descriptors, then the routes) -> listener
-> registration in Consul. Stop, on SIGTERM or SIGINT, as the sidecar drains: fail readiness -> deregister, so
callers stop picking this instance -> stop accepting and let requests in flight finish, for up to
``service.drain_grace`` -> close the mesh -> exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from google.rpc import status_pb2

from meshlet.config import Config, listen_host, split_host_port
from meshlet.discovery.registration import Registration
from meshlet.errors import CannotListen, describe_os_error
from meshlet.mesh import Mesh
from meshlet.telemetry.access_log import AccessLog
from meshlet.telemetry.metrics import Metrics
from meshlet_edge.admin import admin_app
from meshlet_edge.observe import HttpMetrics, HttpObserver, note_route
from meshlet_edge.reflection import learn_pool
from meshlet_edge.registration import edge_registration, named
from meshlet_edge.routes import Route, RouteTable, build_routes, load_pool
from meshlet_edge.status import http_status, refusal, status_json, status_of
from meshlet_edge.transcode import BadRequest, grpc_timeout, request_message, response_json

log = logging.getLogger("meshlet.edge")

JSON = "application/json"
DRAIN_S = 5.0
MAX_BODY_BYTES = 1 << 20  # edge.max_body_bytes in a later slice
Send = Callable[..., Awaitable[Any]]


class Edge:
    def __init__(self, config: Config) -> None:
        self.config = config = named(config)  # service.name defaults to "edge"
        learnt = config.edge.reflection  # routes built at start, once the upstreams' reflection described them
        self.routes: RouteTable = (
            RouteTable(()) if learnt else build_routes(config.edge.services, load_pool(config.edge.descriptor_sets))
        )
        self.metrics = Metrics()  # served on the admin port's /metrics, the mesh's outbound families included
        self.http_metrics = HttpMetrics()
        self.metrics.collect_with(self.http_metrics.collect)
        self.mesh = Mesh(config, face="edge", metrics=self.metrics)
        self.registration: Registration | None = None
        self._undescribed: set[str] = set(config.edge.services) if learnt else set()
        self._draining = False
        self._stop = asyncio.Event()  # SIGTERM or SIGINT
        self._send: dict[Route, Send] = {}
        self._runners: list[web.AppRunner] = []
        self.port = 0
        self.admin_port = 0

    async def start(self) -> None:
        await self.mesh.start()
        for upstream in sorted(set(self.config.edge.services.values())):
            self.mesh.upstream(upstream)  # discovery starts now: /ready and reflection find an answer sooner
        admin = admin_app(ready=self.readiness, config=self.config.redacted, metrics=self.metrics.exposition)
        self.admin_port = await self._listen(admin, self.config.edge.admin, "edge.admin (--admin-addr)")
        if self.config.edge.reflection and not await self._learn_routes():
            return  # stopped while it waited for the upstreams' reflection
        for route in self.routes.routes:  # one multicallable per route, as a stub holds one per method
            channel = self.mesh.channel(route.upstream)
            self._send[route] = channel.unary_unary(
                route.path,
                request_serializer=route.request_type.SerializeToString,
                response_deserializer=route.response_type.FromString,
            )
        access_log = AccessLog() if self.config.telemetry.access_log else None
        observer = HttpObserver(self.mesh.tracer, self.http_metrics, access_log)
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[observer.middleware()])
        app.router.add_route("*", "/{tail:.*}", self._handle)
        grace = self.config.service.drain_grace
        self.port = await self._listen(app, self.config.edge.listen, "edge.listen (--listen)", drain_s=grace)
        log.info(
            "edge listening on %s (admin %s), %d routes",
            self.port,
            self.admin_port,
            len(self.routes.routes),
            extra={"routes": [f"{r.verb} {r.template} -> {r.path}" for r in self.routes.routes]},
        )
        print(f"edge listening on {self.port}", flush=True)
        self.registration = edge_registration(self.config, self.mesh.consul, self.port, self.readiness)
        await self.registration.register()

    async def _learn_routes(self) -> bool:
        """The route table from the upstreams' reflection (NotDescribed when one never describes its service);
        False when a signal came first."""
        edge = self.config.edge
        learning = asyncio.ensure_future(
            learn_pool(edge.services, self.mesh.own_channel, edge.reflection_timeout, waiting=self._undescribed)
        )
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait((learning, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not learning.done():
            learning.cancel()
            await asyncio.gather(learning, return_exceptions=True)
            return False
        self.routes = build_routes(edge.services, learning.result())
        return True

    async def _listen(self, app: web.Application, address: str, field: str, drain_s: float = DRAIN_S) -> int:
        host, port = split_host_port(address)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=drain_s)
        await runner.setup()
        site = web.TCPSite(runner, listen_host(host), port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise CannotListen(
                f"cannot listen on {address} ({describe_os_error(error)}): set {field} to a free port",
                address=address,
            ) from None
        self._runners.append(runner)
        return int(runner.addresses[0][1])  # the port bound, also when the config asked for port 0

    async def stop(self) -> None:
        """Out of rotation first (/ready 503, deregistered), then the listener drains: its requests in flight
        finish within ``service.drain_grace``; the admin port answers to the end."""
        self._draining = True
        if self.registration is not None:
            await self.registration.deregister()
        if self.port:
            log.info("draining requests in flight for up to %.1fs", self.config.service.drain_grace)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        await self.mesh.close()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()
        return 0

    # ------------------------------------------------------------------ admin

    def readiness(self) -> tuple[bool, list[str]]:
        """(ready, what the edge still waits for): /ready's answer and the Consul check's."""
        waiting = ["nothing: draining for shutdown"] if self._draining else []
        services = self.config.edge.services
        waiting += [f"descriptors of {name} from {services[name]}'s reflection" for name in sorted(self._undescribed)]
        if not self.port:
            waiting.append("the listener")
        upstreams = sorted(set(services.values()))
        waiting += [f"discovery of {name}" for name in upstreams if not self.mesh.has_answered(name)]
        return not waiting, waiting

    # ------------------------------------------------------------------ requests

    async def _handle(self, request: web.Request) -> web.Response:
        raw_path = request.rel_url.raw_path
        found = self.routes.match(request.method, raw_path)
        if found is None:
            allowed = self.routes.allowed(raw_path)
            if allowed:
                what = f"{request.method} is not allowed on {request.path}: use {', '.join(allowed)}"
                return _error(refusal(grpc.StatusCode.UNIMPLEMENTED, what), 405, {"Allow": ", ".join(allowed)})
            what = f"no route for {request.method} {request.path}: see the edge's routes in its start log"
            return _error(refusal(grpc.StatusCode.NOT_FOUND, what), 404)
        route = found.route
        note_route(str(route.template))  # the span's http.route and the metrics' route label
        try:
            timeout = grpc_timeout(request.headers.get("grpc-timeout"))
            body = await request.read() if route.body else b""
            message = request_message(route, found.variables, request.rel_url.query.items(), body)
        except BadRequest as bad:
            status = refusal(grpc.StatusCode.INVALID_ARGUMENT, bad.description, [(bad.field, bad.description)])
            return _error(status, 400)
        except web.HTTPRequestEntityTooLarge:
            what = f"the body is larger than {MAX_BODY_BYTES} bytes: send a smaller one"
            return _error(refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, what), 413)
        try:
            reply = await self._send[route](message, timeout=timeout)
            return web.Response(text=response_json(route, reply), content_type=JSON)
        except grpc.aio.AioRpcError as error:
            return _error(status_of(error), http_status(error.code()))
        except Exception:  # a bug of ours must still answer in the one error shape, and never stop the edge
            log.exception("%s %s failed inside the edge", request.method, route.path)
            what = f"the edge failed to serve {route.path}; its log says why"
            return _error(refusal(grpc.StatusCode.INTERNAL, what), 500)


def _error(status: status_pb2.Status, http: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=http, text=status_json(status), content_type=JSON, headers=headers)
