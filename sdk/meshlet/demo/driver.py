"""The demo's traffic: an open-loop caller of ``gateway.Checkout`` through a meshlet channel.

Open loop: call `i` starts at ``i / rate`` whatever the earlier calls are doing, as real users arrive, and its
latency counts from that scheduled moment, so a stall shows up in the percentiles instead of silently slowing
the load (the "coordinated omission" trap of closed-loop load generators).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import grpc

from meshlet.demo.stats import Outcome, Tally
from meshlet_shop_api.gateway.v1 import gateway_pb2, gateway_pb2_grpc

SKUS = ("sku-tea", "sku-coffee", "sku-mug")  # stocked by the million: the demo never runs out


def _request(index: int) -> gateway_pb2.CheckoutRequest:
    return gateway_pb2.CheckoutRequest(
        request_id=f"demo-{uuid.uuid4().hex}",
        customer_id=f"c-{index % 20}",
        sku=SKUS[index % len(SKUS)],
        quantity=1,
    )


def status_name(error: grpc.RpcError) -> str:
    code = error.code() if callable(getattr(error, "code", None)) else None
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class Driver:
    """Calls the gateway over `channel` at `rate` per second for `duration_s`, each call with `deadline_s`."""

    def __init__(self, channel: grpc.aio.Channel, *, rate: float, duration_s: float, deadline_s: float) -> None:
        self._stub: Any = gateway_pb2_grpc.GatewayStub(channel)
        self.rate = rate
        self.duration_s = duration_s
        self.deadline_s = deadline_s
        self.tally = Tally()
        self.started_at: float | None = None  # loop time when the traffic began

    @property
    def planned(self) -> int:
        return max(1, round(self.rate * self.duration_s))

    def elapsed(self) -> float:
        loop = asyncio.get_running_loop()
        return 0.0 if self.started_at is None else loop.time() - self.started_at

    async def warm_up(self, within_s: float) -> str | None:
        """Call until one checkout succeeds; None then, else the last error, after `within_s`."""
        loop = asyncio.get_running_loop()
        until = loop.time() + within_s
        last = "no attempt"
        for index in itertools.count():
            try:
                await self._stub.Checkout(_request(index), timeout=self.deadline_s)
                return None
            except grpc.RpcError as error:
                last = f"{status_name(error)}: {error.details() if callable(error.details) else error}"
            if loop.time() >= until:
                return last
            await asyncio.sleep(0.2)
        return last  # pragma: no cover - itertools.count never ends

    async def run(self) -> Tally:
        loop = asyncio.get_running_loop()
        start = self.started_at = loop.time()
        calls: set[asyncio.Task[None]] = set()
        try:
            for index in range(self.planned):
                scheduled = start + index / self.rate
                if (wait := scheduled - loop.time()) > 0:
                    await asyncio.sleep(wait)
                self.tally.sent += 1
                call = asyncio.create_task(self._call(index, scheduled))
                calls.add(call)
                call.add_done_callback(calls.discard)
            await asyncio.gather(*calls)
        finally:
            for call in calls:
                call.cancel()
        return self.tally

    async def _call(self, index: int, scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        assert self.started_at is not None
        try:
            await self._stub.Checkout(_request(index), timeout=self.deadline_s)
            code = "OK"
        except grpc.RpcError as error:
            code = status_name(error)
        self.tally.record(Outcome(scheduled - self.started_at, loop.time() - scheduled, code))
