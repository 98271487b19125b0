"""The demo's HTTP callers: part of the shop's traffic from outside the mesh, over HTTP/JSON through meshlet-edge.

Open loop, as the gRPC driver: visit `i` starts at ``i / rate`` whatever the earlier ones are doing, and its
latency counts from that moment. A visit reads the item's stock (``GET /v2/inventory/items/{sku}``, the product
page: the edge caches it), checks out (``POST /v1/checkout``) and, when that answers 200, reads the order it made
(``GET /v1/orders/{order_id}``), as a browser shows the order after paying. Every answer is counted by its HTTP
status; a request the edge never answered (refused, timed out) by what went wrong; the stock reads also by their
``Cache-Status``.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp

from meshlet.demo.stats import CHECKOUT, ORDER, STOCK, HttpSeen, Outcome, cache_outcome

SKUS = ("sku-tea", "sku-coffee", "sku-mug")


def checkout_body(index: int) -> dict[str, object]:
    """A checkout as JSON, in proto3's JSON names (lowerCamelCase), as an HTTP client writes it."""
    return {
        "requestId": f"demo-http-{uuid.uuid4().hex}",
        "customerId": f"c-{index % 20}",
        "sku": SKUS[index % len(SKUS)],
        "quantity": 1,
    }


class HttpDriver:
    """Checkouts through the edge at `base_url`, `rate` per second for `duration_s`, each request bounded by
    `deadline_s` (also sent as ``grpc-timeout``, so the edge passes the same deadline into the mesh)."""

    def __init__(
        self, base_url: str, *, rate: float, duration_s: float, deadline_s: float, cache_store: str = "memory"
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.rate = rate
        self.duration_s = duration_s
        self.deadline_s = deadline_s
        self.seen = HttpSeen(cache_store=cache_store)
        self._started_at = 0.0

    @property
    def planned(self) -> int:
        return max(1, round(self.rate * self.duration_s)) if self.rate > 0 else 0

    async def run(self) -> HttpSeen:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=self.deadline_s + 1)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            start = self._started_at = loop.time()
            calls: set[asyncio.Task[None]] = set()
            try:
                for index in range(self.planned):
                    scheduled = start + index / self.rate
                    if (wait := scheduled - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    call = asyncio.create_task(self._checkout(session, index, scheduled))
                    calls.add(call)
                    call.add_done_callback(calls.discard)
                await asyncio.gather(*calls)
            finally:
                for call in calls:
                    call.cancel()
        return self.seen

    async def _checkout(self, session: aiohttp.ClientSession, index: int, scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        body = checkout_body(index)
        await self._request(session, "GET", f"/v2/inventory/items/{body['sku']}", STOCK, scheduled)
        code, answer = await self._request(session, "POST", "/v1/checkout", CHECKOUT, loop.time(), body)
        order_id = answer.get("orderId") if code == "200" and isinstance(answer, dict) else None
        if order_id:
            await self._request(session, "GET", f"/v1/orders/{order_id}", ORDER, loop.time())

    async def _request(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        route: str,
        since: float,
        body: dict[str, object] | None = None,
    ) -> tuple[str, object]:
        loop = asyncio.get_running_loop()
        headers = {"grpc-timeout": f"{round(self.deadline_s * 1000)}m"}
        answer: object = None
        try:
            async with session.request(method, self.base_url + path, json=body, headers=headers) as response:
                code = str(response.status)
                if route == STOCK:
                    self.seen.cache[cache_outcome(response.headers.get("Cache-Status"))] += 1
                if response.content_type == "application/json":
                    answer = await response.json()
        except (TimeoutError, aiohttp.ClientError) as error:
            code = type(error).__name__
        self.seen.routes[route].record(Outcome(since - self._started_at, loop.time() - since, code))
        return code, answer
