"""Sidecar: the start order and the stop order, the two places where meshes hurt users most.

Start (any order of arrival works; /ready says what is still missing): admin -> certificates -> outbound
listeners -> discovery of every configured upstream -> inbound listener -> app health -> registration. Ready
when certificates are loaded, listeners are up, discovery has answered and the app is healthy.

Stop, on SIGTERM or SIGINT: fail readiness -> deregister from Consul -> stop accepting inbound and drain the
calls in flight -> keep outbound working while the app finishes, up to the grace period -> exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from meshlet.call import matches_any
from meshlet.config import Config, split_host_port
from meshlet.discovery.registration import Registration
from meshlet.inbound import InboundParts
from meshlet.mesh import Mesh
from meshlet.security.certs import TlsConfigError
from meshlet_sidecar.admin import Admin, describe_upstreams, gauge
from meshlet_sidecar.app_health import AppHealth
from meshlet_sidecar.forward import ForwardToApp
from meshlet_sidecar.inbound_listener import InboundListener
from meshlet_sidecar.outbound_listener import OutboundListener
from meshlet_sidecar.routing import Routes

log = logging.getLogger("meshlet.sidecar")

CERT_RETRY_S = 1.0


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.mesh = Mesh(config)
        self.service = config.service.name or ""
        self.routes = Routes(
            by_port={policy.local_port: name for name, policy in config.upstreams.items() if policy.local_port},
            by_service=dict(config.sidecar.routes),
        )
        self.admin = Admin(
            config.sidecar.admin,
            ready=self.readiness,
            clusters=self.clusters,
            config=config.redacted,
            metrics=self.metrics,
        )
        self.outbound = [self._outbound_listener(config.sidecar.outbound, None)] + [
            self._outbound_listener(f"127.0.0.1:{policy.local_port}", name)
            for name, policy in config.upstreams.items()
            if policy.local_port
        ]
        self.app = AppHealth(config.sidecar.app) if config.sidecar.app else None
        self.forward = ForwardToApp(config.sidecar.app) if config.sidecar.app else None
        self.inbound: InboundListener | None = None
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
        )

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
        return not waiting, waiting

    def clusters(self) -> list[dict[str, Any]]:
        return describe_upstreams([self.mesh.upstream(name) for name in self.mesh.upstream_names()])

    def metrics(self) -> str:
        """What only the sidecar knows; Admin adds readiness and the per-upstream gauges itself."""
        inbound = self.inbound.in_flight if self.inbound else 0
        outbound = sum(listener.in_flight for listener in self.outbound)
        return gauge("meshlet_inbound_in_flight", "Inbound calls being served.", [({}, inbound)]) + gauge(
            "meshlet_outbound_in_flight", "Outbound calls being proxied for the app.", [({}, outbound)]
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
            if self.forward is not None and self.app is not None:
                await self._start_inbound()
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
        parts = InboundParts.from_config(self.config, consul=self.mesh.consul, clock=time.monotonic)
        self.inbound = InboundListener(
            self.config.sidecar.inbound,
            source=self.mesh.tls_source,
            parts=parts,
            forward=self.forward,
            clock=time.monotonic,
        )
        port = await self.inbound.start()
        await self.app.start()
        if self.service:
            host, _ = split_host_port(self.config.sidecar.inbound)
            address = self.config.service.address or ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host)
            self.registration = Registration(
                self.mesh.consul,
                name=self.service,
                service_id=f"{self.service}-{address}-{port}",
                address=address,
                port=port,
                tags=tuple(self.config.service.tags),
                meta=dict(self.config.service.meta),
                check_ttl_s=self.config.service.check_ttl,
                deregister_after_s=self.config.service.deregister_critical_after,
                health=lambda: "SERVING" if self.readiness()[0] else "NOT_SERVING",
            )
            await self.registration.register()

    async def _shutdown(self) -> None:
        self._draining = True
        grace = self.config.service.drain_grace
        if self.registration is not None:
            await self.registration.deregister()
        if self.inbound is not None:
            log.info("draining inbound calls for up to %.1fs", grace)
            await self.inbound.stop(grace)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:  # the app may still be finishing work that needs its upstreams
            app_finished = self.app is None or not self.app.healthy
            if app_finished and not sum(listener.in_flight for listener in self.outbound):
                break
            await asyncio.sleep(0.05)
        for listener in self.outbound:
            await listener.stop(0)
        if self.app is not None:
            await self.app.stop()
        if self.forward is not None:
            await self.forward.close()
        await self.mesh.close()
        await self.admin.stop()
        log.info("sidecar stopped")
