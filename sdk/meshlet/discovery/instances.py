"""What Consul knows of a service whose instances are all failing: each instance and the output of its checks,
for the NO_HEALTHY_ENDPOINT message, so that it says where to look instead of "check the health checks".

Discovery follows only the passing instances (``?passing``); this asks once for all of them, only when a call
found none to pick, and at most every REPORT_EVERY_S per upstream: calls failing together share one question
and the ones after it read the answer from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from meshlet.discovery.consul_client import ConsulClient, ConsulFactory

REPORT_EVERY_S = 5.0
ASK_TIMEOUT_S = 1.0
SHOWN = 3  # instances described; the others are counted
OUTPUT_CHARS = 160

Fetch = Callable[[str], Awaitable[list[Mapping[str, Any]] | None]]


class InstanceReport:
    """The instances of one service as Consul's health endpoint lists them, summed up in one line."""

    def __init__(
        self,
        service: str,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.monotonic,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.service = service
        self._fetch = fetch
        self._clock = clock
        self._close = close
        self._summary: tuple[float, str] | None = None
        self._pending: asyncio.Future[str] | None = None

    @classmethod
    def from_consul(cls, service: str, consul: ConsulFactory) -> InstanceReport:
        client: list[ConsulClient] = []

        async def fetch(name: str) -> list[Mapping[str, Any]] | None:
            if not client:
                client.append(consul())
            _index, nodes = await client[0].health.service(name)
            return list(nodes) if nodes is not None else None

        async def close() -> None:
            for found in client:
                with contextlib.suppress(Exception):
                    await found.close()

        return cls(service, fetch, close=close)

    async def summary(self, timeout_s: float = ASK_TIMEOUT_S) -> str | None:
        """One line on the service's instances and their checks; None when Consul did not answer in time."""
        known = self._summary
        if known is not None and self._clock() - known[0] < REPORT_EVERY_S:
            return known[1]
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._ask())
            self._pending.add_done_callback(self._forget_pending)
        try:
            async with asyncio.timeout(max(0.0, min(timeout_s, ASK_TIMEOUT_S))):
                return await asyncio.shield(self._pending)
        except Exception:  # Consul away or slow: the error still says where to look, without the list
            return None

    def _forget_pending(self, _done: asyncio.Future[str]) -> None:
        self._pending = None

    async def _ask(self) -> str:
        nodes = await self._fetch(self.service)
        text = summarize(self.service, nodes or [])
        self._summary = (self._clock(), text)
        return text

    async def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        if self._close is not None:
            await self._close()


def summarize(service: str, nodes: Iterable[Mapping[str, Any]]) -> str:
    """``Consul knows 2 instances of inventory: inventory-1 at 10.0.0.5:50051 critical (service check: ...)``."""
    nodes = list(nodes)
    if not nodes:
        return f"Consul knows no instance of {service}: is it running and registered under that name?"
    described = [_instance(node) for node in nodes[:SHOWN]]
    more = f"; and {len(nodes) - SHOWN} more" if len(nodes) > SHOWN else ""
    many = "instance" if len(nodes) == 1 else "instances"
    return f"Consul knows {len(nodes)} {many} of {service}: " + "; ".join(described) + more


def _instance(node: Mapping[str, Any]) -> str:
    service = node.get("Service") or {}
    address = service.get("Address") or (node.get("Node") or {}).get("Address") or "?"
    where = f"{service.get('ID') or service.get('Service')} at {address}:{service.get('Port')}"
    failing = [check for check in node.get("Checks") or () if check.get("Status") != "passing"]
    if not failing:
        tags = service.get("Tags") or []
        return f"{where} passing" + (f" (tags {tags})" if tags else "")
    return f"{where} " + ", ".join(_check(check) for check in failing)


def _check(check: Mapping[str, Any]) -> str:
    output = " ".join(str(check.get("Output") or "no output").split())
    if len(output) > OUTPUT_CHARS:
        output = output[: OUTPUT_CHARS - 1] + "…"
    return f"{check.get('Status')} ({check.get('Name') or check.get('CheckID')}: {output})"
