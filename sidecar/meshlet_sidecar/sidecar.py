"""Sidecar: the start order and the stop order, the two places where meshes hurt users most.

Start (any order of arrival works; /ready says what is still missing): admin -> certificates -> outbound
listeners -> discovery of every configured upstream -> inbound listener -> app health -> registration. Ready
when certificates are loaded, listeners are up, discovery has answered and the app is healthy.

Stop, on SIGTERM or SIGINT: fail readiness -> deregister from Consul -> stop accepting inbound and drain the
calls in flight -> keep outbound working while the app finishes (calls in flight, the app draining, or a call
within the last QUIET_S), all within the grace period -> exit 0.

The app container stops before the sidecar (a native sidecar stops last), and may stop alone (a restart after a
failed liveness probe): its preStop hook asks the admin port to drain (``POST /drain``), which puts the instance
into Consul maintenance until the app is back (meshlet_sidecar.maintenance).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from meshlet.call import ServedInstance, matches_any
from meshlet.config import Config, split_host_port
from meshlet.discovery.registration import Registration, registered_address
from meshlet.errors import ConfigError
from meshlet.inbound import InboundParts
from meshlet.mesh import Mesh
from meshlet.security.certs import TlsConfigError
from meshlet.telemetry.method_names import MethodNames
from meshlet.telemetry.metrics import Metrics
from meshlet_sidecar.admin import Admin, describe_upstreams, no_app, nothing_to_drain
from meshlet_sidecar.app_health import AppHealth
from meshlet_sidecar.forward import ForwardToApp
from meshlet_sidecar.inbound_listener import InboundListener
from meshlet_sidecar.maintenance import REASON, Maintenance
from meshlet_sidecar.method_kinds import MethodInfo, MethodTable, methods_in_descriptor_set
from meshlet_sidecar.outbound_listener import OutboundListener
from meshlet_sidecar.reflection import ReflectionLearner
from meshlet_sidecar.routing import Routes
from meshlet_sidecar.splice import SpliceListener

log = logging.getLogger("meshlet.sidecar")

CERT_RETRY_S = 1.0
# A stopping sidecar that has seen no outbound call for this long, with none in flight and its app not draining,
# stops: two of the app probe's intervals, so that a probe has looked at the app since the last call.
QUIET_S = 2.0


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        check_app_is_named(config)
        self._declared = _read_descriptor_sets(config)  # first: a bad file is a bad config, reported alone
        check_inbound_mode(config)
        self.metrics = Metrics()  # served on the admin port's /metrics
        self.metrics.collect_with(self._collect_metrics)
        self.mesh = Mesh(config, face="sidecar", metrics=self.metrics)
        self.service = config.service.name or ""
        self.instance = ServedInstance()  # its Consul service ID once registered: its refusals name it
        self.routes = Routes(
            by_port={policy.local_port: name for name, policy in config.upstreams.items() if policy.local_port},
            by_service=dict(config.sidecar.routes),
        )
        self.admin = Admin(
            config.sidecar.admin,
            ready=self.readiness,
            clusters=self.clusters,
            config=config.redacted,
            metrics=self.metrics.exposition,
            app=self.app_status,
            drain=self.drain,
        )
        self.outbound = [self._outbound_listener(config.sidecar.outbound, None)] + [
            self._outbound_listener(f"127.0.0.1:{policy.local_port}", name)
            for name, policy in config.upstreams.items()
            if policy.local_port
        ]
        self.app = AppHealth(config.sidecar.app) if config.sidecar.app else None
        self.maintenance = Maintenance(self.app, self._maintenance_in_consul) if self.app else None
        self.forward = (
            ForwardToApp(config.sidecar.app, propagate=self.mesh.tracing is not None, instance=self.instance)
            if config.sidecar.app
            else None
        )
        self._learners: dict[str, ReflectionLearner] = {}  # "" for the app, else the upstream's name
        self._upstream_methods: dict[str, MethodTable] = {}
        l7_inbound = self.forward is not None and config.sidecar.inbound_mode == "l7"  # l4 never asks a method's kind
        self.app_methods = self._method_table("") if l7_inbound else None
        # Metrics and span names call a method by its name when it is known (descriptor sets, reflection) or has
        # answered; any other path is "(unknown)", so invented paths cannot crowd out the real ones.
        self.mesh.declared_methods = self._declares
        self.inbound: InboundListener | SpliceListener | None = None
        self._inbound_parts: InboundParts | None = None
        self.registration: Registration | None = None
        self._certificates_loaded = False
        self._listening = False
        self._draining = False
        self._stop = asyncio.Event()

    def _outbound_listener(self, address: str, upstream: str | None) -> OutboundListener:
        return OutboundListener(
            address,
            routes=self.routes,
            upstream=self.mesh.upstream,
            is_idempotent=self._is_idempotent,
            replay_limit_bytes=lambda name: self.config.upstream(name).retry.replay_buffer_bytes,
            fixed_upstream=upstream,
            methods=self._method_table,
        )

    def _method_table(self, upstream: str) -> MethodTable:
        """What is known of `upstream`'s methods ("": the app's), learnt from its reflection service when on."""
        found = self._upstream_methods.get(upstream)
        if found is None:
            found = self._upstream_methods[upstream] = MethodTable(self._declared)
            if self.config.sidecar.reflection:
                if upstream:
                    name, channel = f"upstream {upstream}", lambda: self.mesh.own_channel(upstream)
                else:
                    assert self.forward is not None
                    forward = self.forward
                    name, channel = f"the app at {forward.app_address}", lambda: forward.channel
                self._learners[upstream] = ReflectionLearner(name, found, channel)
        return found

    def _declares(self, upstream: str, path: str) -> bool:
        """Whether `upstream` ("": the app) is known to have the method at `path`."""
        table = self._method_table(upstream) if upstream else self.app_methods
        return table is not None and table.get(path) is not None

    def _is_idempotent(self, upstream: str, method: str) -> bool:
        """Without the app's protos, only the upstream's ``retry.idempotent`` patterns say a method is safe."""
        return matches_any(method, self.config.upstream(upstream).retry.idempotent)

    # ------------------------------------------------------------------ readiness and introspection

    def readiness(self) -> tuple[bool, list[str]]:
        waiting: list[str] = []
        if self._draining:
            waiting.append("nothing: draining for shutdown")
        if not self._certificates_loaded:
            waiting.append("certificates")
        if not self._listening:
            waiting.append("listeners")
        waiting += [f"discovery of {name}" for name in self.config.upstreams if not self.mesh.has_answered(name)]
        if self.app is not None and not self.app.healthy:
            waiting.append(f"app health ({self.config.sidecar.app})")
        if self.maintenance is not None and self.maintenance.active:
            waiting.append("the app's restart: in maintenance since its preStop drain")
        return not waiting, waiting

    def app_status(self) -> tuple[bool, str]:
        if self.app is None:
            return no_app()
        return self.app.healthy, f"{self.app.status()} ({self.app.last_error or self.app.probe_kind})"

    async def drain(self) -> tuple[int, str]:
        """``POST /drain``: out of rotation until the app is back (or the pod goes, and the instance with it)."""
        if self.maintenance is None:
            return await nothing_to_drain()
        if await self.maintenance.enter():
            return 200, "in maintenance: callers stop picking this instance until the app is back\n"
        return 202, "draining: not ready, and the TTL check fails at the next heartbeat (the agent did not answer)\n"

    async def _maintenance_in_consul(self, enable: bool) -> bool:
        return self.registration is not None and await self.registration.set_maintenance(enable, REASON)

    def _check_output(self, status: str) -> str:
        """The Consul check's Output: what the app's probe found, and what else the sidecar still waits for."""
        app = self.app.describe() if self.app is not None else "no app"
        ready, waiting = self.readiness()
        return app if ready else f"{status}: {app}; sidecar waiting for: {', '.join(waiting)}"

    def clusters(self) -> list[dict[str, Any]]:
        return describe_upstreams([self.mesh.upstream(name) for name in self.mesh.upstream_names()])

    def _collect_metrics(self) -> Iterator[Metric]:
        """What only the sidecar knows, read at scrape time; the mesh's own families are on the same registry."""
        ready = self.readiness()[0]
        yield GaugeMetricFamily("meshlet_sidecar_ready", "1 when the sidecar is ready to serve (/ready)", value=ready)
        calls = CounterMetricFamily(
            "meshlet_sidecar_calls",
            "Calls proxied, by side and by the handler that served them (unary: the method is known to be unary)",
            labels=["side", "handler"],
        )
        sides = [("outbound", self.outbound)] + ([("inbound", [self.inbound])] if self.inbound is not None else [])
        for side, listeners in sides:
            for handler in ("unary", "generic"):
                calls.add_metric([side, handler], sum(getattr(listener, f"{handler}_calls") for listener in listeners))
        yield calls
        yield CounterMetricFamily(
            "meshlet_sidecar_unrouted_calls",
            "Outbound calls for a method no route or local port names, answered UNAVAILABLE by the sidecar",
            value=sum(listener.unrouted_calls for listener in self.outbound),
        )

    # ------------------------------------------------------------------ start and stop

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self.admin.start()
            if not await self._load_certificates():
                return 0
            for listener in self.outbound:
                await listener.start()
            for name in self.config.upstreams:
                self.mesh.upstream(name)  # starts discovery, so the first call finds an answer waiting
                self._method_table(name)
            if self.forward is not None and self.app is not None:
                await self._start_inbound()
            else:
                log.info(
                    "authorization: none, this sidecar has no inbound listener (no sidecar.app)",
                    extra={"event": "authz_effective", "authz_source": "none"},
                )
            self._listening = True
            log.info("sidecar started", extra={"service": self.service, "outbound": self.config.sidecar.outbound})
            await self._stop.wait()
        finally:
            await self._shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 0

    async def _load_certificates(self) -> bool:
        """Certificates may come from an agent that is not up yet: retry until they load or we are told to stop."""
        while not self._stop.is_set():
            try:
                await self.mesh.start()
            except TlsConfigError as error:
                log.warning("waiting for certificates: %s", error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), CERT_RETRY_S)
                continue
            self._certificates_loaded = True
            return True
        return False

    async def _start_inbound(self) -> None:
        assert self.forward is not None
        assert self.app is not None
        parts = self._inbound_parts = InboundParts.from_config(
            self.config,
            consul=self.mesh.consul,
            clock=time.monotonic,
            tracer=self.mesh.tracer,
            metrics=self.metrics,
            names=MethodNames(functools.partial(self._declares, "")),
            instance=self.instance,
        )
        explain_plaintext_inbound(self.config)
        if self.config.sidecar.inbound_mode == "l4":
            assert self.mesh.tls_source is not None  # check_inbound_mode
            self.inbound = SpliceListener(
                self.config.sidecar.inbound,
                source=self.mesh.tls_source,
                parts=parts,
                app_address=self.forward.app_address,
                clock=time.monotonic,
            )
        else:
            self.inbound = InboundListener(
                self.config.sidecar.inbound,
                source=self.mesh.tls_source,
                parts=parts,
                forward=self.forward,
                clock=time.monotonic,
                methods=self.app_methods,
            )
        port = await self.inbound.start()
        await self.app.start()
        for learner in self._learners.values():  # the app's and the configured upstreams': none is waited for
            learner.ask()
        if self.service:
            host, _ = split_host_port(self.config.sidecar.inbound)
            address = registered_address(host, self.config.service.address)
            self.instance.id = f"{self.service}-{address}-{port}"
            self.registration = Registration(
                self.mesh.consul,
                name=self.service,
                service_id=self.instance.id,
                address=address,
                port=port,
                tags=tuple(self.config.service.tags),
                meta=dict(self.config.service.meta),
                check_ttl_s=self.config.service.check_ttl,
                deregister_after_s=self.config.service.deregister_critical_after,
                health=lambda: "SERVING" if self.readiness()[0] else "NOT_SERVING",
                describe=self._check_output,
                notes="meshlet-sidecar heart-beats this check from its readiness and its app's health "
                "(grpc.health.v1, else TCP connect)",
            )
            if await self.registration.register() and not (self.maintenance and self.maintenance.active):
                await self.registration.set_maintenance(False)  # a fresh sidecar ends what a drain left

    async def _shutdown(self) -> None:
        self._draining = True
        grace = self.config.service.drain_grace
        deadline = time.monotonic() + grace
        if self.registration is not None:
            await self.registration.deregister()
        if self.inbound is not None:
            log.info("draining inbound calls for up to %.1fs", grace)
            await self.inbound.stop(max(0.0, deadline - time.monotonic()))  # returns once none is in flight
        if self._inbound_parts is not None:  # the Consul authorizer's refreshes; the denial lines held back
            await self._inbound_parts.close()
        if self._listening:  # else no app was ever served (stopped at start, or waiting for certificates)
            await self._serve_the_app_until_done(deadline)
        for listener in self.outbound:
            await listener.stop(0)
        if self.maintenance is not None:
            await self.maintenance.close()
        if self.app is not None:
            await self.app.stop()
        for learner in self._learners.values():
            await learner.close()
        if self.forward is not None:
            await self.forward.close()
        await self.mesh.close()
        await self.admin.stop()
        log.info("sidecar stopped")

    async def _serve_the_app_until_done(self, deadline: float) -> None:
        """Keep the outbound side up while the app may still call out, until `deadline` (``service.drain_grace``):
        while a call is in flight, while the app drains (it shuts down with us and its last handlers may call), and
        until no call has come for QUIET_S. So a sidecar restarted under an idle app that stays up stops after the
        quiet period, not after the whole grace; a pod stopping with its app keeps serving it to the end."""
        if self.app is not None:
            await self.app.probe()  # a fresh look: the app may have been told to stop at the same moment
        seen, quiet_since = -1, 0.0
        while (now := time.monotonic()) < deadline:
            arrived = sum(listener.arrived for listener in self.outbound)
            if arrived != seen or any(listener.in_flight for listener in self.outbound):
                seen, quiet_since = arrived, now
            elif now - quiet_since >= QUIET_S and not (self.app is not None and self.app.draining):
                log.info("no outbound call for %.1fs and the app is not draining: stopping", QUIET_S)
                return
            await asyncio.sleep(0.05)
        in_flight = sum(listener.in_flight for listener in self.outbound)
        if in_flight:
            log.warning("service.drain_grace is over: cancelling %d outbound calls still in flight", in_flight)


def _read_descriptor_sets(config: Config) -> dict[str, MethodInfo]:
    """The methods that ``sidecar.descriptor_sets`` declare; a file that cannot be read or parsed is a ConfigError."""
    methods: dict[str, MethodInfo] = {}
    for index, path in enumerate(config.sidecar.descriptor_sets):
        field = f"sidecar.descriptor_sets[{index}]"
        try:
            methods.update(methods_in_descriptor_set(path.read_bytes()))
        except OSError as error:
            raise ConfigError(field, str(path), f"cannot be read ({error.strerror or error})") from None
        except ValueError as error:
            raise ConfigError(field, str(path), str(error)) from None
    return methods


def explain_plaintext_inbound(config: Config) -> None:
    """Said at start when the inbound port serves plaintext: where it listens and why (Config keeps it on loopback
    unless ``sidecar.inbound`` is set explicitly)."""
    if config.tls.source != "off":
        return
    address = config.sidecar.inbound
    if "inbound" not in config.sidecar.model_fields_set:
        log.warning(
            "tls.source is off, so the inbound listener listens on %s (loopback) only: it would serve plaintext to "
            "callers it cannot identify; set sidecar.inbound explicitly (e.g. 0.0.0.0:15006) to let other hosts "
            "call the app, or set tls.source to consul or files for mTLS",
            address,
            extra={"event": "inbound_loopback_only", "inbound": address},
        )
    elif split_host_port(address)[0] not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "tls.source is off and sidecar.inbound is %s: any host that reaches it can call the app in plaintext, "
            "unauthenticated; set tls.source to consul or files for mTLS",
            address,
            extra={"event": "inbound_plaintext_exposed", "inbound": address},
        )


def check_app_is_named(config: Config) -> None:
    """An app with no service name would be served and registered under nothing: no caller could find it."""
    if config.sidecar.app and not config.service.name:
        fix = (
            f"is required when sidecar.app is set ({config.sidecar.app}): the app is registered under it; set "
            "service.name (--service NAME, MESHLET_SERVICE__NAME), or leave sidecar.app unset for an outbound-only "
            "sidecar"
        )
        raise ConfigError("service.name", config.service.name, fix)


def check_inbound_mode(config: Config) -> None:
    """``sidecar.inbound_mode: l4`` decides once per connection, so only what a connection tells can be enforced:
    the caller's identity (Consul's authorize is connection-level anyway). A per-method intention or a rate limit
    needs the calls themselves (l7)."""
    if config.sidecar.inbound_mode != "l4":
        return
    why = ""
    if config.tls.source == "off":
        why = "needs mTLS (tls.source consul or files): it authorizes the caller by its certificate"
    elif config.authz.source == "local" and any(tuple(rule.methods) != ("*",) for rule in config.authz.rules):
        why = "authz.rules name methods, which only l7 can tell apart"
    elif config.rate_limit.per_caller.rate_per_s is not None or config.rate_limit.per_method:
        why = "rate_limit counts calls, which only l7 sees"
    elif config.inbound.jwt is not None:
        why = "inbound.jwt reads each call's authorization metadata, which only l7 sees"
    if why:
        raise ConfigError("sidecar.inbound_mode", "l4", f"{why}; use l7 (the default) for this port")
