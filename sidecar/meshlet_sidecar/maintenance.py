"""Maintenance: this instance's Consul maintenance mode, owned by the sidecar that registered the instance.

The app container's preStop hook asks for it (``POST /drain`` on the admin port, from inside the pod), so that
callers' blocking queries drop the instance before the app stops. Kubernetes runs preStop before every stop of
the container, a restart after a failed liveness probe too, so the sidecar ends the maintenance itself once the
app has gone down and answers healthy again. It learns that the app went down from a gRPC connection it holds
open to the app meanwhile: a restart faster than the health probe's interval would slip between two probes,
never a closed connection. A pod that is being deleted never gets there: its sidecar, stopped
last, deregisters the instance and its maintenance with it. The sidecar's /ready is false throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc

from meshlet_sidecar.app_health import SERVING, AppHealth

log = logging.getLogger("meshlet.sidecar")

REASON = "app container stopping (meshlet preStop drain)"

SetInConsul = Callable[[bool], Awaitable[bool]]  # enable -> whether the agent took it
CONNECT_TIMEOUT_S = 2.0  # an app that accepts no connection in this long has gone down already
# Its own connection (not shared with the forwarding channel's pool), never closed for being idle.
_CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1), ("grpc.client_idle_timeout_ms", 2**31 - 1))


class Maintenance:
    """Enter with `enter()`; it ends by itself once `app` has gone down and a probe finds it SERVING again (asked
    every `poll_s`). `set_in_consul(enable)` switches the instance's maintenance in the agent."""

    def __init__(self, app: AppHealth, set_in_consul: SetInConsul, *, poll_s: float = 0.5) -> None:
        self.app = app
        self.poll_s = poll_s
        self._set_in_consul = set_in_consul
        self._active = False
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self._active

    async def enter(self) -> bool:
        """Put the instance into maintenance until the app comes back; True if the agent took it now (else the
        failing readiness still fails its TTL check at the next heartbeat)."""
        if self._active:
            return await self._set_in_consul(True)
        log.warning("entering maintenance: %s; it ends once the app restarts and is healthy", REASON)
        self._active = True
        await self._stop_watching()  # a previous maintenance still telling the agent it ended
        taken = await self._set_in_consul(True)  # before the watch begins, which may end it at once
        held = await self._hold_a_connection()  # before /drain answers: the app's stop comes right after it
        self._task = asyncio.create_task(self._end_when_the_app_is_back(held), name="maintenance")
        return taken

    async def close(self) -> None:
        """Stop watching, leaving the agent as it is: the sidecar is stopping and deregisters the instance."""
        await self._stop_watching()

    async def _stop_watching(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _hold_a_connection(self) -> grpc.aio.Channel | None:
        """A connection the app has accepted, held open so that its stop is seen however soon after /drain it comes
        (opened later, it could reach the app's replacement instead); None if the app accepts none (already down:
        a hung app that failed its liveness probe, say)."""
        channel = grpc.aio.insecure_channel(self.app.app_address, options=_CHANNEL_OPTIONS)
        try:
            await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            await channel.close()
            return None
        except BaseException:
            await channel.close()
            raise
        return channel

    async def _end_when_the_app_is_back(self, held: grpc.aio.Channel | None) -> None:
        if held is not None:
            try:
                await _closed_by_the_app(held)
            finally:
                await held.close()
        log.info("the app at %s went down: waiting for it to be healthy again", self.app.app_address)
        while True:
            if await self.app.probe() == SERVING:  # a fresh answer: the last one may predate the stop
                break
            await asyncio.sleep(self.poll_s)
        self._active = False
        log.info("the app is healthy again after its restart: leaving maintenance")
        while True:
            if await self._set_in_consul(False):
                break
            await asyncio.sleep(self.poll_s)  # the agent is unreachable: keep asking, callers need it back

    def __repr__(self) -> str:
        return f"<Maintenance {'on, waiting for the app to restart' if self.active else 'off'}>"


async def _closed_by_the_app(channel: grpc.aio.Channel) -> None:
    """Returns once the app's process has closed the connection `channel` holds."""
    state = channel.get_state()
    while state == grpc.ChannelConnectivity.READY:
        await channel.wait_for_state_change(state)
        state = channel.get_state()
