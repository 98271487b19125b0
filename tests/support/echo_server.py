"""An echo service served through meshlet's SDK (``Mesh.serve``), run as its own process by integration tests
and benchmarks: ``python -m tests.support.echo_server --name echo-1 --port 0``.

It registers in Consul (CONSUL_HTTP_ADDR) as service ``$MESHLET_SERVICE__NAME`` (default ``echo``), counts every
call it receives (``Stats``), and injects faults on request: ``--fail-code UNAVAILABLE --fail-rate 1.0`` fails
that share of calls, ``--delay-ms`` adds latency. Per call, metadata steers it: ``x-echo-fail: <CODE>`` fails
that call (``x-echo-fail-details: <text>`` sets its details, as a handler passing a downstream's error on;
``x-echo-pushback-ms: <n>`` adds gRPC's pushback trailer, ``x-echo-retry-delay-ms: <n>`` a google.rpc.RetryInfo),
``x-echo-sleep-ms: <n>`` delays it, ``x-echo-set-health: NOT_SERVING`` sets the process's health,
``x-echo-stream-every-ms: <n>`` makes ``ServerStream`` a watch: a message every n ms until the caller leaves.
Callers that send no metadata (an HTTP client through meshlet-edge) steer ``ServerStream`` by its message:
``watch`` is a watch every 20 ms, ``fail-after-<n>:<CODE>`` sends n messages and fails with CODE; a
``BidiStream`` message ``fail:<CODE>`` fails that call with CODE, and ``watch`` makes it reply every 20 ms.
With ``--log FILE`` every execution of ``Echo`` and ``EchoOnce`` appends ``<name> <method> <message>`` to FILE
(one ``write(2)`` on an O_APPEND file), so tests count executions per request across processes; a watch that its
caller cancelled appends ``<name> ServerStream cancelled <message>`` (a BidiStream: ``<name> BidiStream
cancelled watch``).
With ``--upstream NAME`` its ``Echo`` forwards to that service through ``mesh.channel`` (for deadline
propagation tests) and reports the deadline it saw in the reply's message (``metadata?``, or ``metadata?<tag>``,
answers the call's metadata as JSON); ``--upstream-timeout-ms`` gives that
call a timeout of its own (the tighter of it and the caller's deadline applies).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import random
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from meshlet.mesh import Mesh
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc

FAIL_AFTER = re.compile(r"fail-after-([0-9]+):([A-Z_]+)")


class Echo(echo_pb2_grpc.EchoServicer):
    def __init__(self, args: argparse.Namespace, mesh: Mesh) -> None:
        self.args = args
        self.mesh = mesh
        self.calls: collections.Counter[str] = collections.Counter()
        self.rng = random.Random()
        self.log_fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if args.log else None

    def _record(self, method: str, message: str) -> None:
        if self.log_fd is not None:
            os.write(self.log_fd, f"{self.args.name} {method} {message}\n".encode())

    async def _fault(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.calls[method] += 1
        metadata = dict(context.invocation_metadata() or ())
        if "x-echo-set-health" in metadata:  # the process's grpc.health.v1 status, which its TTL check follows
            status = health_pb2.HealthCheckResponse.ServingStatus.Value(str(metadata["x-echo-set-health"]))
            await self.mesh.health.set("", status)
        delay_ms = float(metadata.get("x-echo-sleep-ms", self.args.delay_ms))
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        code = metadata.get("x-echo-fail")
        if code is None and self.args.fail_code and self.rng.random() < self.args.fail_rate:
            code = self.args.fail_code
        if code:
            details = str(metadata.get("x-echo-fail-details", f"{self.args.name}: injected {code}"))
            await context.abort(grpc.StatusCode[str(code)], details, _come_back_later(metadata, str(code), details))

    async def Stats(self, request: echo_pb2.StatsRequest, context: Any) -> echo_pb2.StatsReply:  # noqa: N802
        return echo_pb2.StatsReply(calls=dict(self.calls), served_by=self.args.name)

    async def Echo(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoReply:  # noqa: N802
        await self._fault("Echo", context)
        self._record("Echo", request.message)
        if self.args.upstream:
            stub = echo_pb2_grpc.EchoStub(self.mesh.channel(self.args.upstream))
            timeout = self.args.upstream_timeout_ms / 1000 if self.args.upstream_timeout_ms else None
            inner = await stub.Echo(request, timeout=timeout)
            return echo_pb2.EchoReply(message=inner.message, payload=inner.payload, served_by=self.args.name)
        message = request.message
        if message.startswith("metadata?"):  # "metadata?<tag>": the tag tells calls apart in the log
            message = json.dumps({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})
        if message == "deadline?":
            remaining = context.time_remaining()
            message = "none" if remaining is None else f"{remaining:.3f}"
        return echo_pb2.EchoReply(message=message, payload=request.payload, served_by=self.args.name)

    async def EchoOnce(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoReply:  # noqa: N802
        await self._fault("EchoOnce", context)
        self._record("EchoOnce", request.message)
        return echo_pb2.EchoReply(message=request.message, payload=request.payload, served_by=self.args.name)

    async def ServerStream(  # noqa: N802
        self, request: echo_pb2.EchoRequest, context: Any
    ) -> AsyncIterator[echo_pb2.EchoReply]:
        await self._fault("ServerStream", context)
        every_ms = dict(context.invocation_metadata() or ()).get("x-echo-stream-every-ms")
        if request.message == "watch":
            every_ms = "20"
        if every_ms:
            try:
                for i in itertools.count():
                    yield echo_pb2.EchoReply(message=f"{request.message}-{i}", served_by=self.args.name)
                    await asyncio.sleep(float(every_ms) / 1000)
            except (asyncio.CancelledError, GeneratorExit):  # cancelled by grpc.aio, or closed by it
                self._record("ServerStream", f"cancelled {request.message}")
                raise
        failing = FAIL_AFTER.fullmatch(request.message)
        count = int(failing.group(1)) if failing else 3
        for i in range(count):
            yield echo_pb2.EchoReply(message=f"{request.message}-{i}", served_by=self.args.name)
        if failing:
            await context.abort(grpc.StatusCode[failing.group(2)], f"{self.args.name}: failed after {count} as asked")

    async def ClientStream(self, request_iterator: Any, context: Any) -> echo_pb2.EchoReply:  # noqa: N802
        await self._fault("ClientStream", context)
        messages = [r.message async for r in request_iterator]
        return echo_pb2.EchoReply(message="+".join(messages), served_by=self.args.name)

    async def BidiStream(self, request_iterator: Any, context: Any) -> AsyncIterator[echo_pb2.EchoReply]:  # noqa: N802
        await self._fault("BidiStream", context)
        async for request in request_iterator:
            if request.message.startswith("fail:"):
                await context.abort(grpc.StatusCode[request.message[5:]], f"{self.args.name}: failed as asked")
            if request.message == "watch":  # replies until the caller leaves: a cancelled call's iterator just ends
                try:
                    for i in itertools.count():
                        yield echo_pb2.EchoReply(message=f"watch-{i}", served_by=self.args.name)
                        await asyncio.sleep(0.02)
                except (asyncio.CancelledError, GeneratorExit):
                    self._record("BidiStream", "cancelled watch")
                    raise
            yield echo_pb2.EchoReply(message=request.message, served_by=self.args.name)


def _come_back_later(metadata: dict[str, Any], code: str, details: str) -> tuple[tuple[str, Any], ...]:
    """The trailers that ask a caller to come back later, as the call's metadata asked for them."""
    trailers: list[tuple[str, Any]] = []
    if "x-echo-pushback-ms" in metadata:
        trailers.append(("grpc-retry-pushback-ms", str(metadata["x-echo-pushback-ms"])))
    if "x-echo-retry-delay-ms" in metadata:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(metadata["x-echo-retry-delay-ms"]))
        status = status_pb2.Status(code=grpc.StatusCode[code].value[0], message=details)
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        trailers.append(("grpc-status-details-bin", status.SerializeToString()))
    return tuple(trailers)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="echo-1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1", help="what mesh.serve binds; 'default' leaves it to meshlet")
    parser.add_argument("--fail-code", default="")
    parser.add_argument("--fail-rate", type=float, default=1.0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--upstream", default="")
    parser.add_argument("--upstream-timeout-ms", type=float, default=0.0)
    parser.add_argument("--log", default="", help="append every Echo and EchoOnce execution to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("MESHLET_SERVICE__NAME", "echo")
    async with Mesh.from_env() as mesh:
        server = mesh.server()
        echo_pb2_grpc.add_EchoServicer_to_server(Echo(args, mesh), server)
        await mesh.serve(server, port=args.port, host=None if args.host == "default" else args.host)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
