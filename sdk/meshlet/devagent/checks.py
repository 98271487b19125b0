"""The checks the agent runs itself: GRPC, TCP and HTTP probes on their intervals, TTL expiry, and reaping
services left critical past ``DeregisterCriticalServiceAfter``.

The catalog decides (results, deadlines, what to reap); this module only does the I/O and the waiting.
Probes behave as Consul's: a fresh connection per run, a 10 s default timeout, the first run at a random
point within the first interval, intervals of at least 1 s, and Consul's output texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
from dataclasses import dataclass

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from multidict import CIMultiDict

from meshlet.devagent.catalog_records import CRITICAL, PASSING, WARNING, CheckDefinition
from meshlet.devagent.state import AgentState

log = logging.getLogger("meshlet.devagent.checks")

RUNNABLE = frozenset({"grpc", "tcp", "http"})
MIN_INTERVAL_S = 1.0  # Consul's MinInterval
DEFAULT_TIMEOUT_S = 10.0
HTTP_BODY_LIMIT = 4096
HTTP_HEADERS = {"User-Agent": "Consul Health Check", "Accept": "text/plain, text/*, */*"}


class CheckRunner:
    """Runs the agent's own checks. `reconcile()` is called after every write and only schedules; the
    tasks it keeps match the catalog's local checks, restarted when a check is redefined."""

    def __init__(
        self,
        state: AgentState,
        *,
        reap_interval_s: float,
        min_deregister_after_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self._state = state
        self._reap_interval_s = reap_interval_s
        self._min_deregister_after_s = min_deregister_after_s
        self._rng = rng or random.Random()
        self._probes: dict[str, tuple[CheckDefinition, asyncio.Task[None]]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._planned_version = -1
        self._plan_pending = False
        self._timers_changed = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._running = False

    def reconcile(self) -> None:
        """Wake the TTL timer and, once per burst of writes, re-plan the probes on the next loop turn."""
        if not self._running:
            return
        self._timers_changed.set()
        if not self._plan_pending and self._state.catalog.definitions_version != self._planned_version:
            self._plan_pending = True
            asyncio.get_running_loop().call_soon(self._plan)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self._running = True
        self._background = [
            asyncio.create_task(self._expire_ttls(), name="devagent-ttl"),
            asyncio.create_task(self._reap(), name="devagent-reaper"),
        ]
        self._plan()

    async def stop(self) -> None:
        self._running = False
        tasks = self._background + [task for _, task in self._probes.values()]
        self._probes.clear()
        self._background = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------------------------------ planning

    def _plan(self) -> None:
        self._plan_pending = False
        if not self._running:
            return
        catalog = self._state.catalog
        self._planned_version = catalog.definitions_version
        wanted = {c.id: c.definition for c in catalog.agent_checks() if c.definition.type in RUNNABLE}
        for check_id, (definition, task) in list(self._probes.items()):
            if wanted.get(check_id) != definition:
                task.cancel()
                del self._probes[check_id]
        for check_id, definition in wanted.items():
            if check_id not in self._probes:
                task = asyncio.create_task(self._probe_forever(check_id, definition), name=f"check {check_id}")
                self._probes[check_id] = (definition, task)

    async def _probe_forever(self, check_id: str, definition: CheckDefinition) -> None:
        interval_s = max(definition.interval_s, MIN_INTERVAL_S)
        streak = Streak(definition)
        await asyncio.sleep(self._rng.uniform(0, interval_s))
        while True:
            try:
                status, output = await self._probe(definition)
            except Exception as exc:  # a probe bug must not stop the check
                log.exception("check %s failed to run", check_id)
                status, output = CRITICAL, f"{type(exc).__name__}: {exc}"
            reported = streak.record(status)
            if reported is not None and not self._state.catalog.record_result(check_id, reported, output):
                return
            await asyncio.sleep(interval_s)

    async def _probe(self, definition: CheckDefinition) -> tuple[str, str]:
        timeout_s = definition.timeout_s if definition.timeout_s > 0 else DEFAULT_TIMEOUT_S
        if definition.type == "grpc":
            return await probe_grpc(definition, timeout_s)
        if definition.type == "tcp":
            return await probe_tcp(definition.tcp, timeout_s)
        assert self._session is not None
        return await probe_http(self._session, definition, timeout_s)

    # ------------------------------------------------------------------------------------------ timers

    async def _expire_ttls(self) -> None:
        catalog = self._state.catalog
        while True:
            self._timers_changed.clear()
            for check_id in catalog.expire_ttls():  # Consul logs it too: a critical check with no one saying why
                log.warning("check %s: TTL expired, now critical", check_id)
            deadline = catalog.next_ttl_deadline()
            timeout = None if deadline is None else max(0.0, deadline - catalog.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timers_changed.wait(), timeout)

    async def _reap(self) -> None:
        catalog = self._state.catalog
        while True:
            await asyncio.sleep(self._reap_interval_s)
            for service_id in catalog.services_to_reap(self._min_deregister_after_s):
                log.info("reaping service %s: critical longer than its DeregisterCriticalServiceAfter", service_id)
                catalog.deregister_service(service_id)


@dataclass
class Streak:
    """Consul's StatusHandler: a result is reported once SuccessBeforePassing successes or
    FailuresBeforeWarning/FailuresBeforeCritical failures in a row have been seen (1 each by default)."""

    definition: CheckDefinition
    successes: int = 0
    failures: int = 0

    def record(self, status: str) -> str | None:
        """The status to report after this result, or None to keep the current one."""
        d = self.definition
        if status in (PASSING, WARNING):
            self.successes, self.failures = self.successes + 1, 0
            return status if self.successes >= d.success_before_passing else None
        self.successes, self.failures = 0, self.failures + 1
        if self.failures >= d.failures_before_critical:
            return CRITICAL
        before_warning = d.failures_before_warning or d.failures_before_critical
        return WARNING if self.failures >= before_warning else None


# ------------------------------------------------------------------------------------------ probes


async def probe_grpc(definition: CheckDefinition, timeout_s: float) -> tuple[str, str]:
    """``grpc.health.v1.Health/Check`` on ``host:port[/service]``, plaintext unless GRPCUseTLS."""
    target = definition.grpc
    address, _, service = target.partition("/")
    options: list[tuple[str, str | int]] = [("grpc.enable_retries", 0)]
    if definition.grpc_use_tls:
        if definition.tls_server_name:
            options.append(("grpc.ssl_target_name_override", definition.tls_server_name))
        channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(), options=options)
    else:
        channel = grpc.aio.insecure_channel(address, options=options)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return CRITICAL, f"rpc error: code = {go_code_name(exc.code())} desc = {exc.details()}"
    if response.status == health_pb2.HealthCheckResponse.SERVING:
        return PASSING, f"gRPC check {target}: success"
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return CRITICAL, f"gRPC {target} serving status: {status_name}"


def go_code_name(code: grpc.StatusCode) -> str:
    """grpc-go spells codes in CamelCase: DEADLINE_EXCEEDED is ``DeadlineExceeded``."""
    return "".join(part.capitalize() for part in code.name.split("_"))


async def probe_tcp(address: str, timeout_s: float) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout_s)
    except TimeoutError:
        return CRITICAL, f"dial tcp {address}: i/o timeout"
    except (OSError, ValueError) as exc:
        return CRITICAL, f"dial tcp {address}: {dial_error(exc)}"
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), timeout_s)
    return PASSING, f"TCP connect {address}: Success"


def dial_error(exc: BaseException) -> str:
    """Go's wording for a failed dial: ``connect: connection refused``."""
    number = getattr(exc, "errno", None)
    if number is None and isinstance(exc.__cause__ or exc.__context__, OSError):
        number = getattr(exc.__cause__ or exc.__context__, "errno", None)
    if number in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"connect: {os.strerror(number).lower()}"
    return str(exc) or type(exc).__name__


async def probe_http(session: aiohttp.ClientSession, definition: CheckDefinition, timeout_s: float) -> tuple[str, str]:
    """2xx is passing, 429 warning, anything else critical; the output quotes up to 4 KiB of the body."""
    method = definition.method or "GET"
    url = definition.http
    headers: CIMultiDict[str] = CIMultiDict(HTTP_HEADERS)
    for name, values in definition.header.items():
        headers.popall(name, None)
        for value in values:
            headers.add(name, value)
    try:
        async with session.request(
            method,
            url,
            headers=headers,
            data=definition.body.encode() if definition.body else None,
            allow_redirects=not definition.disable_redirects,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            ssl=not definition.tls_skip_verify,
            server_hostname=definition.tls_server_name or None,
        ) as response:
            body = await response.content.read(definition.output_max_size or HTTP_BODY_LIMIT)
            code = response.status
            result = f"HTTP {method} {url}: {code} {response.reason or ''} Output: {body.decode(errors='replace')}"
    except TimeoutError:
        return CRITICAL, f'{method.capitalize()} "{url}": context deadline exceeded (Client.Timeout exceeded)'
    except aiohttp.ClientConnectorError as exc:
        return CRITICAL, f'{method.capitalize()} "{url}": dial tcp {exc.host}:{exc.port}: {dial_error(exc.os_error)}'
    except (aiohttp.ClientError, ValueError) as exc:
        return CRITICAL, f'{method.capitalize()} "{url}": {exc}'
    if 200 <= code < 300:
        return PASSING, result
    return (WARNING if code == 429 else CRITICAL), result
