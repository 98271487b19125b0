"""Edge: the HTTP listener in front of the mesh. Each request is matched in the route table, transcoded to the
method's message and sent through ``mesh.channel(upstream)``, the same outbound pipeline (discovery, balancing,
deadline, retries, breakers, mTLS, tracing, metrics) an SDK stub's call takes, once the message keeps its proto's
buf.validate constraints (``edge.validate``, on by default); the reply comes back as JSON, a failure as the JSON
form of its google.rpc.Status with the mapped HTTP status. A server-streaming method answers NDJSON or server-sent
events (meshlet_edge.server_stream), one that streams requests is a WebSocket (meshlet_edge.websocket).

Start: routes (a bad descriptor or a conflict is a config error before anything listens) -> certificates ->
discovery of every upstream -> admin -> (with ``edge.reflection``: the descriptors, then the routes) -> listener
-> registration in Consul. Stop, on SIGTERM or SIGINT, as the sidecar drains: fail readiness -> deregister, so
callers stop picking this instance -> stop accepting and let requests in flight finish, for up to
``service.drain_grace`` -> close the mesh -> exit 0.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import hdrs, web

from meshlet.config import Config, listen_host, split_host_port
from meshlet.discovery.registration import Registration
from meshlet.errors import CannotListen, RequestInvalid, describe_os_error
from meshlet.http_limits import RUNNER_LIMITS
from meshlet.mesh import Mesh
from meshlet.telemetry.access_log import AccessLog
from meshlet.telemetry.build import build_labels
from meshlet.telemetry.metrics import Metrics
from meshlet.validation import RequestValidator, summary
from meshlet_edge import caller, cors, etags, openapi, responses, server_stream, websocket
from meshlet_edge.admin import admin_app
from meshlet_edge.auth import Authenticator
from meshlet_edge.bodies import CODINGS, BodyRefused, read_body
from meshlet_edge.cache.policy import ResponseCache
from meshlet_edge.docs import Docs, refuse_shadowing, source_files
from meshlet_edge.forwarding import upstream_metadata
from meshlet_edge.framing import stream_format
from meshlet_edge.lifecycle import Deprecation, deprecations, undated
from meshlet_edge.limits.policy import Limits
from meshlet_edge.observe import HttpMetrics, HttpObserver, note_route
from meshlet_edge.open_streams import OpenStreams
from meshlet_edge.protocol_errors import ShapedAppRunner
from meshlet_edge.reflection import learn_pool
from meshlet_edge.registration import edge_registration, named
from meshlet_edge.request_id import REQUEST_KEY, log_request_ids
from meshlet_edge.retry_after import retry_after
from meshlet_edge.routes import Match, Route, RouteTable, build_routes, load_pool
from meshlet_edge.stages import HeaderHook, HttpStage, prepare_hook, staged
from meshlet_edge.status import http_status, refusal, status_of
from meshlet_edge.transcode import BadRequest, grpc_timeout, query_params, request_message, response_json

log = logging.getLogger("meshlet.edge")

JSON = "application/json"
JSON_TYPE = {hdrs.CONTENT_TYPE: "application/json; charset=utf-8"}  # as content_type=JSON writes it, unparsed
DRAIN_S = 5.0
Send = Callable[..., Awaitable[Any]]
ROUTE_KEY = "meshlet.edge.route"
CACHE_METRIC = "Answers of cached routes by outcome: hit, miss, collapsed (awaited another miss), bypass, "
CACHE_METRIC += "invalidation (a write dropped a rule's entries), store_error (the request bypassed the cache)"


class Edge:
    def __init__(self, config: Config) -> None:
        self.config = config = named(config)  # service.name defaults to "edge"
        learnt = config.edge.reflection  # routes built at start, once the upstreams' reflection described them
        self.routes = RouteTable(())
        self.deprecations: dict[str, Deprecation] = {}
        self.docs: Docs | None = None
        if not learnt:
            self._use_routes(build_routes(config.edge.services, load_pool(config.edge.descriptor_sets)))
        self.metrics = Metrics()  # served on the admin port's /metrics, the mesh's outbound families included
        self.http_metrics = HttpMetrics()
        self.metrics.collect_with(self.http_metrics.collect)
        self.mesh = Mesh(config, face="edge", metrics=self.metrics)
        # edge.validate: buf.validate constraints checked before a request leaves (a 400 with a BadRequest)
        self.validator = RequestValidator() if config.edge.validate_requests else None
        # edge.auth: who is calling (meshlet_edge.auth); identity headers are stripped from clients even without it
        self.auth = Authenticator(config.edge, self.mesh.consul, self._method_of)
        self._forwardable = tuple(h for h in config.edge.forward_headers if h not in self.auth.identity_headers)
        for header in sorted(set(config.edge.forward_headers) - set(self._forwardable)):
            log.warning(
                "edge.forward_headers names %s, which only edge.auth sets: a client's is never forwarded", header
            )
        self.limits = Limits(config.edge) if config.edge.plans else None  # edge.plans: rate limits and quotas
        if self.limits is not None:
            self.metrics.collect_with(self.limits.collect)
        # edge.cache, keyed on what else reaches the upstream too: forwarded headers, the caller's mapped claims
        self.cache = (
            ResponseCache(config.edge.cache, forwarded=self._forwardable, identity=self.auth.identity_metadata)
            if config.edge.cache.routes
            else None
        )
        if self.cache is not None:
            counts = self.cache.counts
            self.metrics.counters_from("meshlet_edge_cache_answers", CACHE_METRIC, "outcome", lambda: dict(counts))
        self.registration: Registration | None = None
        self._undescribed: set[str] = set(config.edge.services) if learnt else set()
        self._draining = False
        self._stop = asyncio.Event()  # SIGTERM or SIGINT
        self._send: dict[Route, Send] = {}
        self._open_streams = OpenStreams()  # ended in the one error shape when the drain grace runs out
        self._runners: list[web.AppRunner] = []
        self.port = 0
        self.admin_port = 0

    async def start(self) -> None:
        log_request_ids()
        await self.mesh.start()
        for upstream in sorted(set(self.config.edge.services.values())):
            self.mesh.upstream(upstream)  # discovery starts now: /ready and reflection find an answer sooner
        usage = self.limits.usage if self.limits is not None else None
        admin = admin_app(
            ready=self.readiness, config=self.config.redacted, metrics=self.metrics.exposition, usage=usage
        )
        self.admin_port = await self._listen(admin, self.config.edge.admin, "edge.admin (--admin-addr)")
        if self.config.edge.reflection and not await self._learn_routes():
            return  # stopped while it waited for the upstreams' reflection
        for route in self.routes.routes:  # one multicallable per route, as a stub holds one per method
            # the routes' pool: a method's idempotency_level there decides whether a failed call may be re-sent
            channel = self.mesh.channel(route.upstream, descriptors=route.request_type.DESCRIPTOR.file.pool)
            self._send[route] = _multicallable(channel, route)(
                route.path,
                request_serializer=route.request_type.SerializeToString,
                response_deserializer=route.response_type.FromString,
            )
        access_log = AccessLog() if self.config.telemetry.access_log else None
        observer = HttpObserver(self.mesh.tracer, self.http_metrics, access_log)
        edge = self.config.edge
        # In request order: observer, compression, then the policies: CORS preflights (answered before auth), the
        # failed-credentials guard, auth (401/403), rate limits (429); the cache's lookup is in _handle, after them.
        stages: list[HttpStage] = [observer.middleware(), responses.middleware(edge.compression.min_bytes)]
        hooks: list[HeaderHook] = [responses.add_request_id]  # headers every answer gets, streamed ones too
        if edge.cors is not None:
            policy = cors.CorsPolicy(edge.cors, (route.verb for route in self.routes.routes))
            stages.append(cors.middleware(policy))
            hooks.append(cors.header_hook(policy))
        await self.auth.start()
        if self.auth.rules:
            self.auth.warn_uneven(self.routes.routes)  # a method one path guards and another leaves open
            if self.limits is not None and self.limits.failures is not None:
                stages.append(self.limits.failed_credentials())  # an address that keeps failing is not checked
            stages.append(self.auth.middleware)
        if self.limits is not None:
            stages.append(self.limits.middleware())
            hooks.append(self.limits.add_headers)
        hooks.append(self._deprecation_headers)
        app = web.Application(client_max_size=edge.max_body_bytes)
        app.on_response_prepare.append(prepare_hook(hooks))
        if self.docs is not None:
            self.docs.add_to(app, functools.partial(staged, stages))
        app.router.add_route("*", r"/{tail:[\s\S]*}", staged(stages, self._handle))  # [\s\S]: a %0A in the path too
        # Bodies are inflated by meshlet_edge.bodies, within edge.max_body_bytes, not by aiohttp.
        grace = self.config.service.drain_grace
        self.port = await self._listen(
            app,
            edge.listen,
            "edge.listen (--listen)",
            drain_s=grace,
            runner_class=ShapedAppRunner,
            auto_decompress=False,
        )
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
        self.registration = edge_registration(self.config, self.mesh.consul, self.port, self.readiness)
        await self.registration.register()

    def _method_of(self, verb: str, raw_path: str) -> str:
        """The gRPC method the route of a request calls ("" when none does), for policy rules naming methods; the
        route is noted for the observer now, so a policy's refusal is counted under its route too."""
        found = self.routes.match(verb, raw_path)
        if found is None:
            return ""
        note_route(str(found.route.template))
        return found.route.path

    def _use_routes(self, routes: RouteTable) -> None:
        """The route table, and what is derived from it once: the deprecation headers and the OpenAPI document."""
        self.routes = routes
        edge = self.config.edge
        self.deprecations = deprecations(routes.routes, edge.deprecations, datetime.datetime.now(datetime.UTC))
        if edge.docs:
            refuse_shadowing(routes)
            self.docs = Docs(self._document())

    def _document(self) -> dict[str, Any]:
        """The OpenAPI document of the route table, with the protos' comments where the descriptor sets kept them."""
        comments = openapi.comments_of(source_files(self.config.edge.descriptor_sets))
        return openapi.document(
            self.routes.routes,
            title=f"meshlet-edge: {self.config.service.name}",
            version=build_labels()["version"],
            comments=comments,
            deprecations=self.deprecations,
            max_body_bytes=self.config.edge.max_body_bytes,
        )

    def _deprecation_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        route = request.get(ROUTE_KEY)
        if route is not None and route.path in self.deprecations:
            response.headers.update(self.deprecations[route.path].headers())

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
        self._use_routes(build_routes(edge.services, learning.result()))
        return True

    async def _listen(
        self,
        app: web.Application,
        address: str,
        field: str,
        drain_s: float = DRAIN_S,
        runner_class: type[web.AppRunner] = web.AppRunner,
        **options: Any,
    ) -> int:
        host, port = split_host_port(address)
        limits = {**RUNNER_LIMITS, **options}
        # handler_cancellation: a client that goes away cancels its handler, and so the upstream call it waits on
        runner = runner_class(
            app, access_log=None, handle_signals=False, shutdown_timeout=drain_s, handler_cancellation=True, **limits
        )
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
        grace = self.config.service.drain_grace
        if self.port:
            log.info("draining requests in flight for up to %.1fs", grace)
        # a stream still open as the grace runs out ends with UNAVAILABLE, not a connection cut mid-body: a little
        # before aiohttp's own wait (rounded up to a whole second) ends and it closes what is left
        ending = asyncio.get_running_loop().call_later(max(grace - 1.0, grace / 2), self._open_streams.end_all)
        for runner in reversed(self._runners):
            await runner.cleanup()
        ending.cancel()
        self._runners.clear()
        await self.auth.close()
        if self.limits is not None:
            await self.limits.close()
        if self.cache is not None:
            await self.cache.close()
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

    async def _handle(self, request: web.Request) -> web.StreamResponse:
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
        request[ROUTE_KEY] = route  # for the answer's Deprecation headers, whatever the answer
        if self.limits is not None and (refused := await self.limits.admit(request, route.path)) is not None:
            return refused  # after auth, before the cache and the upstream call
        if self.cache is None:
            return await self._forward(request, found)
        unary = not (route.client_streaming or route.server_streaming)
        rule = self.cache.rule_for(request.method, raw_path, route.path) if unary else None
        if rule is not None:
            return await self.cache.serve(request, rule, functools.partial(self._forward, request, found))
        response = await self._forward(request, found)
        await self.cache.after(request.method, raw_path, route.path, response.status)  # a write's invalidations
        return response

    async def _forward(self, request: web.Request, found: Match) -> web.StreamResponse:
        """The call upstream and its answer: JSON, a stream, or the error's status."""
        route = found.route
        if route.client_streaming and not web.WebSocketResponse().can_prepare(request).ok:
            return websocket.upgrade_required(request, route, _error)
        streams_over_http = route.server_streaming and not route.client_streaming
        media = stream_format(request.headers.get("Accept")) if streams_over_http else None
        if streams_over_http and media is None:
            return server_stream.not_acceptable(request, _error)
        edge = self.config.edge
        try:
            timeout = grpc_timeout(request.headers.get("grpc-timeout"))
            metadata = upstream_metadata(request.headers, self._forwardable, request[REQUEST_KEY])
            metadata += self.auth.identity_metadata(caller.current.get())
            if route.client_streaming:
                return await self._websocket(request, route, found.variables, timeout, metadata)
            body = await read_body(request, edge.max_body_bytes) if route.body else b""
            query = query_params(request.rel_url.raw_query_string)  # strict UTF-8, unlike rel_url.query
            query = [(name, value) for name, value in query if name != self.auth.key_query]  # the API key is no field
            message = request_message(route, found.variables, query, body)
        except BadRequest as bad:
            status = refusal(grpc.StatusCode.INVALID_ARGUMENT, bad.description, [(bad.field, bad.description)])
            return _error(status, 400)
        except BodyRefused as refused:
            return _body_refused(refused)
        if self.validator is not None and (broken := self.validator.check(message)) is not None:
            invalid = RequestInvalid(summary(message.DESCRIPTOR.name, broken), broken, method=route.path)
            return _error(status_of(invalid), 400)  # the shape a server's inbound validate stage answers
        try:
            if media:
                call = self._send[route](message, timeout=timeout, metadata=metadata)
                self._open_streams.add(call)
                try:
                    return await server_stream.serve(request, route, call, media, _error, self._open_streams.explain)
                finally:
                    self._open_streams.discard(call)
            reply = await self._send[route](message, timeout=timeout, metadata=metadata)
            response = web.Response(body=response_json(route, reply).encode(), headers=JSON_TYPE)
            if route.safe and route.verb == "GET" and isinstance(response.body, bytes):
                response.headers[hdrs.ETAG] = etags.strong_etag(response.body)  # If-None-Match can spare the body
            return response
        except grpc.aio.AioRpcError as error:
            status = status_of(error)
            wait = retry_after(error.trailing_metadata(), status)
            headers = None if wait is None else {"Retry-After": wait}
            return _error(status, http_status(error.code()), headers, pool=route.request_type.DESCRIPTOR.file.pool)
        except Exception:  # a bug of ours must still answer in the one error shape, and never stop the edge
            log.exception("%s %s failed inside the edge", request.method, route.path)
            what = f"the edge failed to serve {route.path}; its log says why"
            return _error(refusal(grpc.StatusCode.INTERNAL, what), 500)

    async def _websocket(
        self, request: web.Request, route: Route, variables: dict[str, str], timeout: float | None, metadata: Any
    ) -> web.StreamResponse:
        started: list[Any] = []

        def start(requests: Any) -> Any:
            call = self._send[route](requests, timeout=timeout, metadata=metadata)
            started.append(call)
            self._open_streams.add(call)
            return call

        try:
            max_bytes = self.config.edge.max_body_bytes
            return await websocket.serve(request, route, variables, start, max_bytes, self._open_streams.explain)
        finally:
            for call in started:
                self._open_streams.discard(call)


BODY_REFUSALS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
}


def _body_refused(refused: BodyRefused) -> web.Response:
    violations = [(refused.field, refused.description)] if refused.status in (400, 415) else []
    status = refusal(BODY_REFUSALS[refused.status], refused.description, violations)
    headers = {"Accept-Encoding": ", ".join(CODINGS)} if refused.field == "Content-Encoding" else None
    response = _error(status, refused.status, headers)
    if refused.status == 408:
        response.force_close()  # the rest of a stalled body is not worth waiting for
    return response


def _multicallable(channel: grpc.aio.Channel, route: Route) -> Any:
    """The channel's multicallable of the route's kind, as a generated stub picks one per method."""
    if route.client_streaming:
        return channel.stream_stream if route.server_streaming else channel.stream_unary
    return channel.unary_stream if route.server_streaming else channel.unary_unary


_error = responses.error_answer  # the one error shape; the stream handlers are given it too
