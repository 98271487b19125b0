"""What checking a request against its proto's buf.validate constraints costs per call (the edge's
``edge.validate`` and the inbound stage's ``inbound.validate``).

1. The check alone (protovalidate's native engine through meshlet.validation): typical shop requests, valid and
   invalid (an invalid one also pays for the BadRequest), and the sidecar's way, parsing raw bytes first.
2. The inbound pipeline alone (no sockets), without and with the stage: typed messages as the SDK's servicers get
   them, and raw bytes as the sidecar forwards them.
3. A real unary call over loopback: a plain grpcio client calling two ``mesh.server()`` servers in this process,
   one with ``inbound.validate`` off and one with it on; p50/p99 one call at a time, the two taking turns, and CPU
   per call (client and server both in this process) at 16 in flight.

Nothing is asserted. Knobs: BENCH_VALIDATION_CALLS (default 20000, parts 1 and 2), BENCH_VALIDATION_DURATION_S
(default 4, part 3 per measurement).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from benchmarks.sdk_overhead import Call, Result, closed_loop, paired
from meshlet.call import InboundCall
from meshlet.config import load_config
from meshlet.inbound import InboundParts, build_inbound
from meshlet.mesh import Mesh
from meshlet.validation import RequestValidator, parse_as
from meshlet_shop_api.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshlet_shop_api.orders.v1 import orders_pb2

CALLS = int(os.environ.get("BENCH_VALIDATION_CALLS", "20000"))
DURATION_S = float(os.environ.get("BENCH_VALIDATION_DURATION_S", "4"))
IN_FLIGHT = 16
RESERVE_PATH = "/shop.inventory.v1.Inventory/Reserve"

RESERVE = inventory_pb2.ReserveRequest(reservation_id="r-0b9f6c1e-1", sku="sku-tea", quantity=2)
ORDER = orders_pb2.CreateOrderRequest(
    request_id="q-0b9f6c1e-7a51-4c2e-9a7e-3f1d2c4b5a69",
    customer_id="c-42",
    items=[orders_pb2.LineItem(sku="sku-tea", quantity=2), orders_pb2.LineItem(sku="sku-mug", quantity=1)],
)
BAD_ORDER = orders_pb2.CreateOrderRequest(customer_id="c-42", items=[orders_pb2.LineItem(sku="Mug!", quantity=0)])


def per_call_us(run: Callable[[], object], calls: int = CALLS) -> float:
    for _ in range(min(1000, calls)):
        run()
    began = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - began) / calls * 1e6


def check_alone() -> None:
    validator = RequestValidator()
    parse_reserve = parse_as(inventory_pb2.ReserveRequest)
    parse_order = parse_as(orders_pb2.CreateOrderRequest)
    reserve_bytes, order_bytes = RESERVE.SerializeToString(), ORDER.SerializeToString()
    rows: dict[str, Callable[[], object]] = {
        "ReserveRequest, valid": lambda: validator.check(RESERVE),
        "CreateOrderRequest (2 items), valid": lambda: validator.check(ORDER),
        "CreateOrderRequest, 3 violations -> BadRequest": lambda: validator.check(BAD_ORDER),
        "ReserveRequest from bytes (sidecar)": lambda: validator.check(parse_reserve(reserve_bytes)),  # type: ignore[arg-type]
        "CreateOrderRequest from bytes (sidecar)": lambda: validator.check(parse_order(order_bytes)),  # type: ignore[arg-type]
    }
    print(f"\n== the check alone, {CALLS} calls each ==")
    print(f"{'request':<48}{'per call':>12}")
    for name, run in rows.items():
        print(f"{name:<48}{per_call_us(run):9.2f} us")


async def pipeline_alone() -> None:
    async def terminal(call: InboundCall) -> bytes:
        return b"reply"

    plain, validating = InboundParts(), InboundParts(validator=RequestValidator())
    decode = parse_as(inventory_pb2.ReserveRequest)
    handlers: dict[str, tuple[Callable[[InboundCall], Awaitable[Any]], Any]] = {
        "SDK (typed), stage off": (build_inbound(terminal, plain, RESERVE_PATH), RESERVE),
        "SDK (typed), stage on": (build_inbound(terminal, validating, RESERVE_PATH), RESERVE),
        "sidecar (bytes), stage off": (
            build_inbound(terminal, plain, RESERVE_PATH, decode),
            RESERVE.SerializeToString(),
        ),
        "sidecar (bytes), stage on": (
            build_inbound(terminal, validating, RESERVE_PATH, decode),
            RESERVE.SerializeToString(),
        ),
    }
    spent = dict.fromkeys(handlers, 0.0)
    rounds = 4
    for _ in range(rounds):  # taking turns: drift hits every variant alike
        for name, (handler, request) in handlers.items():
            began = time.perf_counter()
            for _ in range(CALLS // rounds):
                await handler(InboundCall(RESERVE_PATH, (), request))
            spent[name] += time.perf_counter() - began
    print(f"\n== the inbound pipeline alone (no sockets, no other stage), ReserveRequest, {CALLS} calls each ==")
    print(f"{'pipeline':<32}{'per call':>12}{'added':>12}")
    for name, seconds in spent.items():
        us = seconds / (CALLS // rounds * rounds) * 1e6
        base = spent[name.replace("stage on", "stage off")] / (CALLS // rounds * rounds) * 1e6
        added = f"{us - base:+9.2f} us" if name.endswith("stage on") else ""
        print(f"{name:<32}{us:9.2f} us{added:>12}")


class Inventory(inventory_pb2_grpc.InventoryServicer):
    async def Reserve(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's method name
        return inventory_pb2.ReserveReply(reservation_id=request.reservation_id, remaining=10, served_by="bench")


def reserve_call(reserve: Any) -> Call:
    return lambda: reserve(RESERVE, timeout=5)


async def real_calls() -> None:
    servers: dict[str, grpc.aio.Server] = {}
    meshes: list[Mesh] = []
    channels: list[grpc.aio.Channel] = []
    calls: dict[str, Call] = {}
    try:
        for name, validate in (("inbound.validate off", False), ("inbound.validate on", True)):
            config = load_config(None, env={}, overrides={"tls.source": "off", "inbound.validate": validate})
            mesh = Mesh(config)
            meshes.append(mesh)
            server = mesh.server()
            inventory_pb2_grpc.add_InventoryServicer_to_server(Inventory(), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers[name] = server
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            channels.append(channel)
            calls[name] = reserve_call(inventory_pb2_grpc.InventoryStub(channel).Reserve)
        for call in calls.values():
            for _ in range(300):
                await call()
        latency = await paired(calls, DURATION_S)
        loaded: dict[str, Result] = {name: Result(latencies=[]) for name in calls}
        for _ in range(3):
            for name, call in calls.items():
                loaded[name].merge(await closed_loop(call, IN_FLIGHT, DURATION_S / 3))
    finally:
        for channel in channels:
            await channel.close()
        for server in servers.values():
            await server.stop(None)
        for mesh in meshes:
            await mesh.close()
    print("\n== a real unary call over loopback: plain grpcio client -> mesh.server(), ReserveRequest ==")
    print(f"{'server':<24}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}{'CPU/call':>12}  (16 in flight; client+server)")
    base = loaded["inbound.validate off"].cpu_us_per_call
    for name, result in latency.items():
        cpu = loaded[name].cpu_us_per_call
        added = f"{cpu - base:+.1f} us" if name.endswith("on") else ""
        print(
            f"{name:<24}{result.percentile(0.5):9.3f}{result.percentile(0.99):9.3f}{loaded[name].throughput:10.0f}"
            f"{cpu:9.1f} us  {added}"
        )


def main() -> None:
    print(f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}: a shared machine adds noise)")
    check_alone()
    asyncio.run(pipeline_alone())
    asyncio.run(real_calls())


if __name__ == "__main__":
    main()
