"""Mesh: the SDK's one object. It loads the config, owns the runtime (discovery watchers, upstreams, endpoint
channels) and gives service code three things: ``channel(service)`` for calls, ``server()`` for a grpc.aio
server with meshlet's inbound stages, and ``serve(server, port)`` to register, serve and drain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Tracer

from meshlet.call import ServedInstance, matches_any
from meshlet.config import Config, load_config
from meshlet.deadline import Clock
from meshlet.discovery.consul_client import ConsulFactory, consul_factory, read_token_file
from meshlet.discovery.consul_watch import ConsulWatch
from meshlet.discovery.instances import InstanceReport
from meshlet.discovery.registration import WILDCARDS, Registration, registered_address
from meshlet.errors import ConfigError
from meshlet.events import EventBus
from meshlet.inbound import InboundHandler, InboundParts, build_inbound
from meshlet.security.certs import (
    CertificateSource,
    channel_credentials,
    channel_options,
    server_credentials,
)
from meshlet.security.handshake_failures import Expectation, HandshakeFailures
from meshlet.security.identity import SpiffeId
from meshlet.security.peers import CallerIdentities
from meshlet.security.sources import make_source
from meshlet.security.upstream_identity import VerifiedEndpoints
from meshlet.telemetry.access_log import AccessLog
from meshlet.telemetry.method_names import MethodNames
from meshlet.telemetry.metrics import Metrics
from meshlet.telemetry.metrics_server import MetricsServer
from meshlet.telemetry.state_log import StateLog
from meshlet.telemetry.tracing import Tracing, build_tracing
from meshlet.transport.channels import (
    SERVER_OPTIONS,
    ChannelFactory,
    EndpointChannels,
    compression_options,
    insecure_channel,
)
from meshlet.transport.listen import add_port, join_host_port
from meshlet.transport.mesh_channel import MeshChannel
from meshlet.transport.server import InboundInterceptor
from meshlet.upstream import Upstream

log = logging.getLogger("meshlet")

_SAFE_LEVELS = (
    descriptor_pb2.MethodOptions.IDEMPOTENT,
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
)


def declared_idempotent(path: str, pool: descriptor_pool.DescriptorPool | None = None) -> bool:
    """Whether the method's proto declares ``idempotency_level`` IDEMPOTENT or NO_SIDE_EFFECTS, as `pool` (the
    default pool: the generated modules this process imported) describes it."""
    try:
        method = (pool or descriptor_pool.Default()).FindMethodByName(path.lstrip("/").replace("/", "."))
    except KeyError:
        return False
    return method.GetOptions().idempotency_level in _SAFE_LEVELS


class Mesh:
    """``async with Mesh.from_env() as mesh:`` then ``mesh.channel(...)``, ``mesh.server()``, ``mesh.serve(...)``."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        face: str = "sdk",
        span_exporters: Sequence[SpanExporter] = (),
        metrics: Metrics | None = None,
    ) -> None:
        """`face` names this process's kind on its traces' resource (``meshlet.face``); `span_exporters` receive
        this mesh's spans beside those the config sets (tests pass an in-memory exporter)."""
        self.config = config
        self.events = EventBus()
        self.tracing: Tracing | None = build_tracing(
            config.telemetry, service=config.service.name, face=face, exporters=span_exporters
        )
        """The tracer provider and its exporters; None when tracing is off (no OTLP endpoint, no span file)."""
        if self.tracing is not None:
            self.events.subscribe(self.tracing.on_event)
        self.state_log = StateLog()
        """Breakers, ejections and retry budgets changing state, one log line each (sampled trace or not)."""
        self.state_log.watch(self.events)
        if metrics is None and config.telemetry.metrics_port is not None:
            metrics = Metrics()
        self.metrics = metrics
        """This mesh's Prometheus metrics: None unless ``telemetry.metrics_port`` serves them (or the sidecar's
        admin does); their stages are then left out of the pipelines."""
        if metrics is not None:
            metrics.watch(self.events)
            metrics.track_upstreams(lambda: tuple(self._upstreams.values()))
            if self.tracing is not None:
                doc = "Spans dropped because the exporter's queue was full (the collector was away or slow)"
                metrics.counter_from("meshlet_spans_dropped", doc, self.tracing.dropped_spans)
                doc = "Spans an exporter failed to deliver, by reason (export_failed: the collector unreachable, "
                doc += "refusing or too slow; exporter_error: the exporter raised)"
                metrics.counters_from("meshlet_spans_export_failed", doc, "reason", self.tracing.failed_exports)
        self._access_log = AccessLog() if config.telemetry.access_log else None
        self._metrics_server: MetricsServer | None = None
        self._clock = clock
        self._rng = rng or random.Random()
        token = config.consul.token.get_secret_value() if config.consul.token is not None else None
        cacert = str(config.consul.cacert) if config.consul.cacert is not None else None
        token_file = _readable_token_file(config)
        self._consul: ConsulFactory = consul_factory(
            config.consul.address, token=token, token_file=token_file, ca_file=cacert
        )
        self._upstreams: dict[str, Upstream] = {}
        self._watches: dict[str, ConsulWatch] = {}
        self._verified: dict[str, VerifiedEndpoints] = {}
        self._channels: dict[tuple[str, descriptor_pool.DescriptorPool | None], MeshChannel] = {}
        self._own_channels: dict[str, MeshChannel] = {}
        self.declared_methods: Callable[[str, str], bool] = _every_method
        """(upstream, method path) -> whether the upstream is known to have the method: metrics and span names call
        those by name, others only once they have been answered. The SDK: all (its stubs'); the sidecar narrows it
        to its descriptor sets and reflection answers, its apps' calls being anyone's paths."""
        self._stop = asyncio.Event()
        self._starting: set[asyncio.Task[None]] = set()
        self._tls: CertificateSource | None = make_source(
            config, self._consul, config.service.name or "", rng=self._rng
        )
        self._tls_started = False
        self._inbound: InboundParts | None = None
        self.instance = ServedInstance()  # its Consul service ID once serve() registered it: its refusals name it
        self.health = health.aio.HealthServicer()
        """This process's grpc.health.v1 status: ``await mesh.health.set("", NOT_SERVING)`` marks it unhealthy, and
        the TTL check in Consul follows at the next heartbeat."""

    @classmethod
    def from_env(cls, path: str | Path | None = None, **overrides: Any) -> Mesh:
        """Config from ``MESHLET_CONFIG`` (or `path`), ``MESHLET_*`` variables and ``CONSUL_HTTP_ADDR``.

        For a process's main, as meshlet's own commands: a bad config prints one line naming the field and the fix
        on stderr and ends the process with exit 2 (SystemExit), never a traceback. ``Mesh(load_config(...))``
        raises the ConfigError instead, for code that handles it."""
        try:
            return cls(load_config(path, overrides=overrides or None))
        except ConfigError as error:
            print(f"meshlet: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    async def __aenter__(self) -> Mesh:
        await self.start()
        return self

    async def start(self) -> None:
        """Load certificates (when ``tls.source`` is not off) before any call or server needs them; serve
        ``/metrics`` on ``telemetry.metrics_port`` when it is set."""
        port = self.config.telemetry.metrics_port
        if port is not None and self.metrics is not None and self._metrics_server is None:
            server = MetricsServer(
                self.metrics.exposition,
                self.config.telemetry.metrics_host,
                port,
                health=lambda: _overall_status(self.health),
            )
            await server.start()
            self._metrics_server = server
        if self._tls is not None and not self._tls_started:
            await self._tls.start()
            self._tls_started = True
            if self._tls.current().identity_dns_name is None:
                log.warning(
                    "our certificate has no identity DNS SAN (a URI-only leaf, as a real Consul issues): grpc checks "
                    "upstream servers by their common name, which names the service only lowered and stripped to "
                    "[a-z0-9] (led-ger and ledger share one); meshlet checks each endpoint's URI SAN once before "
                    "using it, but a process that later takes over a checked endpoint's address is checked by the "
                    "common name only",
                    extra={"event": "weak_server_check"},
                )
            self._tls.subscribe(lambda _material: self._refresh_channels())

    @property
    def tracer(self) -> Tracer | None:
        """The tracer of this mesh's spans (None: tracing off)."""
        return self.tracing.tracer if self.tracing is not None else None

    @property
    def consul(self) -> ConsulFactory:
        """Builds Consul clients for this mesh's agent (address, token, CA from the config)."""
        return self._consul

    @property
    def tls_source(self) -> CertificateSource | None:
        """Where this mesh's certificates come from; None when ``tls.source`` is off."""
        return self._tls

    def upstream_names(self) -> list[str]:
        return list(self._upstreams)

    def has_answered(self, service: str) -> bool:
        """Whether discovery has answered for `service` (False also when nothing asked for it yet)."""
        found = self._upstreams.get(service)
        return found is not None and found.picker is not None

    def _refresh_channels(self) -> None:
        """A rotated certificate: new calls use new channels; calls in flight finish on the old ones."""
        for upstream in self._upstreams.values():
            upstream.channels.refresh()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ client side

    def channel(self, service: str, *, descriptors: descriptor_pool.DescriptorPool | None = None) -> MeshChannel:
        """A channel to `service` by name: discovery, balancing, retries, breakers and deadlines per call.
        `descriptors`: the pool the caller's messages come from, where a method's declared idempotency is read
        (the default pool when None; meshlet-edge passes the pool of its descriptor sets)."""
        found = self._channels.get((service, descriptors))
        if found is None:
            upstream = self.upstream(service)
            patterns = upstream.policy.retry.idempotent

            def is_idempotent(path: str) -> bool:
                return matches_any(path, patterns) or declared_idempotent(path, descriptors)

            found = self._channels[service, descriptors] = MeshChannel(
                service,
                upstream.handler,
                is_idempotent=is_idempotent,
                replay_limit_bytes=upstream.policy.retry.replay_buffer_bytes,
            )
        return found

    def _declared_outbound(self, service: str, path: str) -> bool:
        return self.declared_methods(service, path)

    def own_channel(self, service: str) -> MeshChannel:
        """A channel for the mesh's own calls to `service` (a sidecar asking its reflection service): the same
        endpoints, balancing and breakers, but no spans, metrics or access log lines, and each call must carry
        ``MESH_OWN_METADATA`` so that the other side keeps it out of its numbers too."""
        found = self._own_channels.get(service)
        if found is None:
            upstream = self.upstream(service)
            found = self._own_channels[service] = MeshChannel(
                service,
                upstream.own_handler,
                is_idempotent=lambda path: True,  # reflection only reads
                replay_limit_bytes=upstream.policy.retry.replay_buffer_bytes,
            )
        return found

    def upstream(self, service: str) -> Upstream:
        """The per-destination state for `service`, created (and its discovery started) on first use."""
        found = self._upstreams.get(service)
        if found is None:
            policy = self.config.upstream(service)
            channels = EndpointChannels(self._channel_factory(service), compression_options(policy.compression))
            handshakes = HandshakeFailures(functools.partial(self._expectation, service))
            found = self._upstreams[service] = Upstream(
                service,
                policy,
                channels=channels,
                events=self.events,
                clock=self._clock,
                rng=self._rng,
                tracer=self.tracer,
                metrics=self.metrics,
                access_log=self._access_log,
                explain_failure=handshakes.explain,
                instances=InstanceReport.from_consul(service, self._consul),
                names=MethodNames(functools.partial(self._declared_outbound, service)),
            )
            on_update = found.update_endpoints
            if self._tls is not None and self._tls.current().identity_dns_name is None:
                # URI-only leaves (a real Consul): grpc can match only the common name, which services share
                # (led-ger, ledger), so each endpoint proves it is `service` by its URI SAN before it is used.
                # Leaves with the identity DNS SAN need no such check: grpc matches it on every connection.
                verified = self._verified[service] = VerifiedEndpoints(
                    self._upstream_identity(service), self._tls, found.update_endpoints
                )
                found.refused_endpoints = lambda: verified.refused
                on_update = verified.update
            watch = self._watches[service] = ConsulWatch(
                service,
                consul=self._consul,
                on_update=on_update,
                events=self.events,
                rng=self._rng,
            )
            task = asyncio.get_running_loop().create_task(watch.start())
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
        return found

    def _upstream_identity(self, service: str) -> Callable[[], SpiffeId]:
        """The identity an instance of `service` must present: our trust domain, partition and namespace."""
        source = self._tls
        assert source is not None

        def expected() -> SpiffeId:
            ours = source.current().identity
            return SpiffeId(ours.trust_domain, ours.namespace, ours.datacenter, service, ours.partition)

        return expected

    def _expectation(self, service: str) -> Expectation:
        """What a server of `service` must present, with our current certificate (read when a handshake failed)."""
        if self._tls is None or not self._tls_started:
            return Expectation(service)
        material = self._tls.current()
        ours = material.identity
        expected = SpiffeId(ours.trust_domain, ours.namespace, self.config.consul.datacenter or "dc1", service)
        return Expectation(service, expected.uri, ours.trust_domain, ours.uri, material.trust_bundle_pem)

    def _channel_factory(self, service: str) -> ChannelFactory:
        """Plaintext, or mTLS with our current certificate, verifying that the server is `service`."""
        source = self._tls
        if source is None:
            return insecure_channel
        if not self._tls_started:
            raise RuntimeError("tls is on: enter the mesh first (`async with Mesh.from_env() as mesh:`)")
        datacenter = self.config.consul.datacenter or "dc1"

        def secure_channel(target: str, options: tuple[tuple[str, Any], ...]) -> grpc.aio.Channel:
            material = source.current()
            identity = material.identity
            expect = channel_options(
                service,
                identity.namespace,
                datacenter,
                identity.trust_domain,
                by_common_name=material.identity_dns_name is None,
            )
            return grpc.aio.secure_channel(target, channel_credentials(material), options=options + expect)

        return secure_channel

    # ------------------------------------------------------------------ server side

    def server(self, *, options: Sequence[tuple[str, Any]] = (), **kwargs: Any) -> grpc.aio.Server:
        """A grpc.aio server whose calls run through meshlet's inbound stages (identity, authorization, rate
        limits, deadline, as configured); serve it with `serve()`."""
        if self._inbound is None:
            self._inbound = InboundParts.from_config(
                self.config,
                consul=self._consul,
                clock=self._clock,
                tracer=self.tracer,
                metrics=self.metrics,
                names=MethodNames(),  # every method: grpc answers unknown ones before the stages
                instance=self.instance,
            )
        parts = self._inbound

        def build(terminal: InboundHandler, method: str) -> InboundHandler:
            return build_inbound(terminal, parts, method)  # a sidecar's reflection questions: not the app's calls

        identify = CallerIdentities(self._tls, parts.trusted_domains).of_call if self._tls is not None else None
        interceptor = InboundInterceptor(build, self._clock, identify)
        server_options = [*options, *SERVER_OPTIONS]  # grpc takes the first of two equal keys: the caller's win
        server = grpc.aio.server(interceptors=[interceptor], options=server_options, **kwargs)
        shares_port = any(key == "grpc.so_reuseport" and value for key, value in options)  # workers, on purpose
        return _ServiceRecorder(server, shares_port=shares_port)

    async def serve(self, server: grpc.aio.Server, port: int, *, host: str | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or `stop()`): register in Consul with a TTL check heart-beaten from the
        server's grpc.health.v1 status; on the signal report NOT_SERVING, deregister, stop accepting, drain
        in-flight calls for ``service.drain_grace`` and return.

        It listens on `host` (default: ``service.address``, else 127.0.0.1; ``0.0.0.0`` for every interface) and
        registers ``service.address`` (default: the address it listens on, 127.0.0.1 behind 0.0.0.0), so that by
        default Consul names an address this server answers on. The port is this server's alone: when it is taken
        (or the address is not this host's) it raises CannotListen, which uncaught exits 1 with one line."""
        name = self.config.service.name
        if not name:
            raise ValueError("serve() needs service.name: set it in the config file or MESHLET_SERVICE__NAME")
        configured = self.config.service.address
        host = host or configured or "127.0.0.1"
        address = registered_address(host, configured)
        health_servicer = self.health
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [*_recorded_services(server), health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        await self.start()  # certificates, and the metrics port, for a mesh that was not entered
        credentials = server_credentials(self._tls) if self._tls is not None else None
        bound = add_port(
            server,
            join_host_port(host.strip("[]"), port),
            credentials,
            what=f"serve {name}",
            fix="choose another port (mesh.serve(server, port=...)) or stop the process that holds it",
            shared=getattr(server, "meshlet_shares_port", False),
        )
        await server.start()
        for service_name in ("", *_recorded_services(server)):
            await health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        if host.strip("[]") not in WILDCARDS and address != host:
            log.warning("listening on %s but registering %s (service.address): callers dial %s", host, address, address)
        self.instance.id = f"{name}-{address}-{bound}"  # named by this server's refusals (meshlet.call.ServedInstance)
        registration = Registration(
            self._consul,
            name=name,
            service_id=self.instance.id,
            address=address,
            port=bound,
            tags=tuple(self.config.service.tags),
            meta=dict(self.config.service.meta),
            check_ttl_s=self.config.service.check_ttl,
            deregister_after_s=self.config.service.deregister_critical_after,
            health=lambda: _overall_status(health_servicer),
        )
        await registration.register()
        log.info(
            "serving %s on %s:%d, registered as %s:%d",
            name,
            host,
            bound,
            address,
            bound,
            extra={"service": name, "port": bound, "address": address},
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await health_servicer.enter_graceful_shutdown()  # NOT_SERVING everywhere, and the heartbeat says so
            await registration.deregister()
            log.info("draining %s for up to %.1fs", name, self.config.service.drain_grace)
            await server.stop(grace=self.config.service.drain_grace)
            log.info("stopped %s", name)

    def stop(self) -> None:
        """Ask `serve()` to drain and return, as SIGTERM does."""
        self._stop.set()

    async def close(self) -> None:
        """Stop discovery, certificate renewal and authorization refreshes; close every endpoint channel."""
        starting, self._starting = list(self._starting), set()
        for task in starting:  # a watch whose start has not run yet must never start after close
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        if self._inbound is not None:
            await self._inbound.close()
        if self._tls is not None and self._tls_started:
            await self._tls.stop()
            self._tls_started = False
        watches, self._watches = list(self._watches.values()), {}
        for watch in watches:
            with contextlib.suppress(Exception):
                await watch.stop()
        verified, self._verified = list(self._verified.values()), {}
        await asyncio.gather(*(v.close() for v in verified), return_exceptions=True)
        upstreams, self._upstreams = list(self._upstreams.values()), {}
        await asyncio.gather(*(u.close() for u in upstreams), return_exceptions=True)
        self._channels.clear()
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:
            await metrics_server.stop()
        self.state_log.flush()
        tracing, self.tracing = self.tracing, None
        if tracing is not None:  # hands over what is queued, for a few seconds at most
            await tracing.aclose()

    def __repr__(self) -> str:
        return f"<Mesh {self.config.service.name or '(client only)'}: {len(self._upstreams)} upstreams>"


class _ServiceRecorder(grpc.aio.Server):
    """A grpc.aio.Server that remembers the services added to it, for health and reflection."""

    def __init__(self, server: grpc.aio.Server, *, shares_port: bool = False) -> None:
        self._server = server
        self.meshlet_services: list[str] = []
        self.meshlet_shares_port = shares_port  # built with grpc.so_reuseport on: several workers share the port

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[Any]) -> None:
        for handler in generic_rpc_handlers:
            service_name = getattr(handler, "service_name", None)
            if callable(service_name) and service_name() not in self.meshlet_services:
                self.meshlet_services.append(service_name())
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self._server.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        port: int = self._server.add_insecure_port(address)
        return port

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        port: int = self._server.add_secure_port(address, server_credentials)
        return port

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        done: bool = await self._server.wait_for_termination(timeout)
        return done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def _overall_status(servicer: health.aio.HealthServicer) -> str:
    """The server's overall grpc.health.v1 status (service ""), which the TTL heartbeat reports to Consul.

    grpcio-health-checking keeps statuses in a private dict and offers no synchronous read; this is the one
    place that reaches into it."""
    statuses: dict[str, int] = servicer._server_status
    value = statuses.get("", health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(value)
    return name


def _recorded_services(server: grpc.aio.Server) -> list[str]:
    recorded: list[str] = getattr(server, "meshlet_services", [])
    return [name for name in recorded if name not in (health.SERVICE_NAME, reflection.SERVICE_NAME)]


def _readable_token_file(config: Config) -> str | None:
    """``consul.token_file``, checked once here so that a missing file is a bad config, not a failed watch."""
    path = config.consul.token_file
    if path is None:
        return None
    try:
        read_token_file(str(path))
    except OSError as error:
        why = f"cannot be read ({error.strerror or error})"
        raise ConfigError("consul.token_file", str(path), f"{why}: it holds the Consul ACL token") from None
    return str(path)


def _every_method(service: str, path: str) -> bool:
    """The SDK's calls come from its stubs, the app's own code: every method it calls exists (see every_method)."""
    return True
