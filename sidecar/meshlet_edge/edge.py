"""Edge: the HTTP listener in front of the mesh. Each request is matched in the route table, transcoded to the
method's message and sent through ``mesh.channel(upstream)``, the same outbound pipeline (discovery, balancing,
deadline, retries, breakers, mTLS, tracing, metrics) an SDK stub's call takes; the reply comes back as JSON, a
failure as the JSON form of its google.rpc.Status with the mapped HTTP status.

Start: routes (a bad descriptor or a conflict is a config error before anything listens) -> certificates ->
discovery of every upstream -> admin -> listener. Stop, on SIGTERM or SIGINT: stop accepting, let requests in
flight finish, close the mesh, exit 0.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from google.rpc import status_pb2

from meshlet.config import Config, listen_host, split_host_port
from meshlet.errors import CannotListen, describe_os_error
from meshlet.mesh import Mesh
from meshlet.telemetry.build import build_labels
from meshlet_edge import openapi
from meshlet_edge.docs import Docs, refuse_shadowing, source_files
from meshlet_edge.lifecycle import deprecations, undated
from meshlet_edge.routes import Route, RouteTable, build_routes, load_pool
from meshlet_edge.status import http_status, refusal, status_json, status_of
from meshlet_edge.transcode import BadRequest, grpc_timeout, request_message, response_json

log = logging.getLogger("meshlet.edge")

JSON = "application/json"
DRAIN_S = 5.0
MAX_BODY_BYTES = 1 << 20  # edge.max_body_bytes in a later slice
Send = Callable[..., Awaitable[Any]]
ROUTE_KEY = "meshlet.edge.route"


class Edge:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.routes: RouteTable = build_routes(config.edge.services, load_pool(config.edge.descriptor_sets))
        self.deprecations = deprecations(
            self.routes.routes, config.edge.deprecations, datetime.datetime.now(datetime.UTC)
        )
        self.docs: Docs | None = None
        if config.edge.docs:
            refuse_shadowing(self.routes)
            self.docs = Docs(self._document())
        self.mesh = Mesh(config, face="edge")
        self._send: dict[Route, Send] = {}
        self._runners: list[web.AppRunner] = []
        self.port = 0
        self.admin_port = 0

    async def start(self) -> None:
        await self.mesh.start()
        for route in self.routes.routes:  # one multicallable per route, as a stub holds one per method
            channel = self.mesh.channel(route.upstream)
            self._send[route] = channel.unary_unary(
                route.path,
                request_serializer=route.request_type.SerializeToString,
                response_deserializer=route.response_type.FromString,
            )
        admin = web.Application()
        admin.router.add_get("/ready", self._ready)
        admin.router.add_get("/live", _live)
        self.admin_port = await self._listen(admin, self.config.edge.admin, "edge.admin (--admin-addr)")
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        if self.docs is not None:
            self.docs.add_to(app)
        app.on_response_prepare.append(self._deprecation_headers)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)  # [\s\S]: a %0A in the path too
        self.port = await self._listen(app, self.config.edge.listen, "edge.listen (--listen)")
        log.info(
            "edge listening on %s (admin %s), %d routes",
            self.port,
            self.admin_port,
            len(self.routes.routes),
            extra={"routes": [f"{r.verb} {r.template} -> {r.path}" for r in self.routes.routes]},
        )
        for name in undated(self.deprecations):
            log.warning(
                "%s is deprecated but edge.deprecations gives it no date: answering Deprecation with the "
                "edge's start time; set edge.deprecations.%s.since (and sunset)",
                name,
                name,
            )
        print(f"edge listening on {self.port}", flush=True)

    def _document(self) -> dict[str, Any]:
        """The OpenAPI document of the route table, with the protos' comments where the descriptor sets kept them."""
        comments = openapi.comments_of(source_files(self.config.edge.descriptor_sets))
        return openapi.document(
            self.routes.routes,
            title=f"meshlet-edge: {self.config.service.name}",
            version=build_labels()["version"],
            comments=comments,
            deprecations=self.deprecations,
            max_body_bytes=MAX_BODY_BYTES,
        )

    async def _deprecation_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        route = request.get(ROUTE_KEY)
        if route is not None and route.path in self.deprecations:
            response.headers.update(self.deprecations[route.path].headers())

    async def _listen(self, app: web.Application, address: str, field: str) -> int:
        host, port = split_host_port(address)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=DRAIN_S)
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
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        await self.mesh.close()

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.stop()
        return 0

    # ------------------------------------------------------------------ admin

    async def _ready(self, request: web.Request) -> web.Response:
        waiting = [name for name in sorted(set(self.config.edge.services.values())) if not self.mesh.has_answered(name)]
        if waiting:
            return web.Response(status=503, text=f"waiting for: discovery of {', '.join(waiting)}\n")
        return web.Response(text="ready\n")

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
        request[ROUTE_KEY] = route  # for the answer's Deprecation headers, whatever the answer
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


async def _live(request: web.Request) -> web.Response:
    return web.Response(text="live\n")
