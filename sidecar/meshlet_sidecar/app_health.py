"""AppHealth: the local app's health as the sidecar sees it, probed every interval on localhost.

The sidecar's Consul TTL check and its ``/ready`` page both read it, so the mesh sends calls to this instance
only while the app behind it can answer them. The probe asks the app's ``grpc.health.v1.Health/Check("")``
(the whole server), as Consul's and Kubernetes' gRPC checks do. An app that has no health service (it answers
UNIMPLEMENTED, as every gRPC server does for an unknown service) is probed by TCP connect instead, Consul's
TCP check: the port accepting connections is the best evidence such an app gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
UNKNOWN = "UNKNOWN"  # before the first probe: grpc.health.v1's own name for "no answer yet"

GRPC_PROBE = "grpc.health.v1"
TCP_PROBE = "TCP connect"

# Its own connection: in grpc's global subchannel pool the probe would share the forwarding channel's
# connection to the app, and with it that connection's reconnect backoff after the app restarts.
_CHANNEL_OPTIONS = (("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1))


class AppHealth:
    """Probes the app at `app_address` (``host:port``) every `interval_s`, each probe bounded by `timeout_s`.

    `status()` is a grpc.health.v1 status name (what Registration's `health` callable returns); `last_error`
    says why the app is not SERVING, or is None. A single probe decides, as Consul's checks do by default.
    Trap: an app without a health service is probed by TCP connect, which cannot tell a hung app from a
    healthy one; if the app stops accepting connections, the next probe asks grpc.health.v1 again, so an app
    restarted with a health service is judged by it.
    """

    def __init__(self, app_address: str, *, interval_s: float = 1.0, timeout_s: float = 1.0) -> None:
        self.app_address = app_address
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.probe_kind = GRPC_PROBE
        self.last_error: str | None = None
        self._status = UNKNOWN
        self._health_answered = False  # the app's health service answered the last probe, whatever it said
        self._serving = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def status(self) -> str:
        return self._status

    @property
    def healthy(self) -> bool:
        return self._status == SERVING

    @property
    def draining(self) -> bool:
        """The app is up but says it is not serving: it is shutting down (a graceful server's health service turns
        NOT_SERVING while its last calls finish), and those calls may still need the sidecar's outbound side."""
        return self._health_answered and self._status != SERVING

    async def start(self) -> None:
        """Probe once, then keep probing in the background; returns once the first answer is known."""
        await self.probe()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"app-health {self.app_address}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_healthy(self, timeout_s: float) -> bool:
        """True as soon as a probe finds the app SERVING; False if none does within `timeout_s`."""
        try:
            await asyncio.wait_for(self._serving.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def probe(self) -> str:
        """Probe the app now and record the result; returns the new status."""
        try:
            status, error = await self._probe()
        except Exception as exc:  # a probe must never take the sidecar down; say what happened instead
            status, error = NOT_SERVING, f"probe failed: {exc!r}"
        self._record(status, error)
        return status

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.probe()

    async def _probe(self) -> tuple[str, str | None]:
        self._health_answered = False
        if self.probe_kind == GRPC_PROBE:
            answer = await self._check_grpc()
            if answer is not None:
                return answer
            log.info("app at %s has no grpc.health.v1 service: probing it by TCP connect", self.app_address)
            self.probe_kind = TCP_PROBE
        error = await self._connect()
        if error is None:
            return SERVING, None
        self.probe_kind = GRPC_PROBE
        return NOT_SERVING, error

    async def _check_grpc(self) -> tuple[str, str | None] | None:
        """The app's answer to Check(""), or None when it has no health service."""
        async with grpc.aio.insecure_channel(self.app_address, options=_CHANNEL_OPTIONS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return None
                return NOT_SERVING, await self._explain(exc)
        self._health_answered = True
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        if name == SERVING:
            return SERVING, None
        return name, f"app at {self.app_address}: its health service answers {name}"

    async def _explain(self, exc: grpc.aio.AioRpcError) -> str:
        """A failed Check, in words that lead to the fix: a closed port, a silent one, or the app's own error."""
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            refused = await self._connect()
            if refused is not None:
                return refused
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return (
                f"app at {self.app_address} accepts connections but did not answer grpc.health.v1 Check within "
                f"{self.timeout_s}s: is it a gRPC server, and is it overloaded?"
            )
        return f"app at {self.app_address}: grpc.health.v1 Check failed: {code.name}: {exc.details()}"

    async def _connect(self) -> str | None:
        """None when the app's port accepts a TCP connection within the timeout, else why not."""
        host, _, port = self.app_address.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), self.timeout_s)
        except TimeoutError:
            return f"app at {self.app_address}: TCP connect timed out after {self.timeout_s}s"
        except (OSError, ValueError) as exc:
            reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
            return f"app at {self.app_address} is unreachable: {reason}; is it running and listening there?"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None

    def _record(self, status: str, error: str | None) -> None:
        if status != self._status:
            level = logging.INFO if status == SERVING else logging.WARNING
            log.log(level, "app at %s: %s -> %s (%s)", self.app_address, self._status, status, error or "ok")
        self._status = status
        self.last_error = error
        if status == SERVING:
            self._serving.set()
        else:
            self._serving.clear()

    def describe(self) -> str:
        """What the last probe asked and what it found, in the words a Consul check's Output needs."""
        if self._status == SERVING and self.probe_kind == TCP_PROBE:
            return f"app at {self.app_address}: TCP connect accepted (it serves no grpc.health.v1)"
        if self._status == SERVING:
            return f"app at {self.app_address}: grpc.health.v1 status SERVING"
        return self.last_error or f"app at {self.app_address}: {self._status} (not probed yet)"

    def __repr__(self) -> str:
        why = f" ({self.last_error})" if self.last_error else ""
        return f"<AppHealth {self.app_address} by {self.probe_kind}: {self._status}{why}>"
