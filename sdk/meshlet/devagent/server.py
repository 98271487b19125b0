"""The dev agent process: state, blocking-query wakeups, agent-run checks, persistence and the HTTP API,
started in order and stopped in reverse. ``meshlet dev-agent`` runs :func:`serve`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from meshlet.devagent.api import agent, catalog, common, connect, health, kv, status
from meshlet.devagent.api.guard import AllowedHosts, guard
from meshlet.devagent.checks import CheckRunner
from meshlet.devagent.http_limits import MAX_BODY_BYTES, RUNNER_LIMITS
from meshlet.devagent.metrics import AgentMetrics
from meshlet.devagent.persist import load_snapshot, save_snapshot
from meshlet.devagent.state import AgentState

log = logging.getLogger("meshlet.devagent")

PERSIST_DELAY_S = 0.05  # coalesce bursts of writes into one snapshot


@dataclass(frozen=True)
class AgentConfig:
    """How to run the agent. The last three knobs exist so tests need not wait Consul's real minutes."""

    http_host: str = "127.0.0.1"
    http_port: int = 8500
    datacenter: str = "dc1"
    node: str = field(default_factory=socket.gethostname)
    data_dir: Path | None = None
    reap_interval_s: float = 30.0  # Consul's reaper period
    min_deregister_after_s: float = 60.0  # Consul's CheckDeregisterIntervalMin
    leaf_cert_ttl_s: float = 72 * 3600.0  # Consul's DefaultLeafCertTTL
    allowed_hosts: tuple[str, ...] = ()  # Host names besides its address that the agent answers (api/guard.py)


class DevAgent:
    """One agent: call `start()`, then `stop()`; `address` is where it listens once started."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.changes = common.Changes()
        self.renders = common.RenderCache()
        self.state = AgentState(
            node=config.node,
            datacenter=config.datacenter,
            leaf_ttl_s=config.leaf_cert_ttl_s,
            clock=time.monotonic,
            wall_clock=time.time,
        )
        self.address = f"{config.http_host}:{config.http_port}"
        self.checks = CheckRunner(
            self.state,
            reap_interval_s=config.reap_interval_s,
            min_deregister_after_s=config.min_deregister_after_s,
        )
        self.metrics = AgentMetrics(blocking=lambda: self.changes.waiting, index=lambda: self.state.index.value)
        self._runner: web.AppRunner | None = None
        self._persist_pending: asyncio.TimerHandle | None = None
        self.started_at = time.time()

    # --------------------------------------------------------------------- lifecycle

    def build_app(self) -> web.Application:
        allowed = AllowedHosts(self.config.http_host, self.config.allowed_hosts)
        middlewares = [self.metrics.middleware, guard(allowed), common.consul_errors]
        app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
        app[common.AGENT] = self
        for section in (agent, health, catalog, kv, status, connect):
            section.add_routes(app)
        app.router.add_get("/metrics", self.metrics.page)  # Prometheus text; not Consul's API (/v1/agent/metrics)
        return app

    async def start(self) -> str:
        """Restore state, start checks and serve HTTP; returns ``host:port`` (port 0 picks a free one)."""
        if self.config.data_dir is not None:
            snapshot = load_snapshot(self.config.data_dir)
            if snapshot is not None:
                self.state.restore(snapshot)
                log.info("restored state from %s at index %d", self.config.data_dir, self.state.index.value)
        self.state.index.subscribe(self.changes.notify)
        self.state.index.subscribe(self.checks.reconcile)
        if self.config.data_dir is not None:
            self.state.index.subscribe(self._schedule_persist)
        await self.checks.start()
        self._runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None, **RUNNER_LIMITS)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http_host, self.config.http_port, reuse_address=True)
        await site.start()
        host, port = self._runner.addresses[0][:2]  # the bound port (asyncio's loop or uvloop's)
        self.address = f"{host}:{port}"
        return self.address

    async def stop(self) -> None:
        """Stop serving (answering every blocked query first), stop checks and write a last snapshot."""
        self.changes.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.checks.stop()
        if self._persist_pending is not None:
            self._persist_pending.cancel()
            self._persist_pending = None
        self._persist()

    # --------------------------------------------------------------------- persistence

    def _schedule_persist(self) -> None:
        if self._persist_pending is None:
            loop = asyncio.get_running_loop()
            self._persist_pending = loop.call_later(PERSIST_DELAY_S, self._persist)

    def _persist(self) -> None:
        self._persist_pending = None
        if self.config.data_dir is not None:
            save_snapshot(self.config.data_dir, self.state.snapshot())


async def serve(config: AgentConfig) -> None:
    """Run an agent until SIGTERM or SIGINT, logging one line when it is ready."""
    agent_ = DevAgent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = await agent_.start()
    log.info(
        "dev agent ready: http://%s datacenter=%s node=%s data_dir=%s",
        address,
        config.datacenter,
        config.node,
        config.data_dir or "(memory)",
    )
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await agent_.stop()
        log.info("dev agent stopped")
