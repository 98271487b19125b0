"""A real OTLP/gRPC trace receiver on loopback: opentelemetry-proto's TraceService, served with grpc.aio in the
test's process, keeping every span it is sent (what Jaeger's port 4317 would get), flattened for assertions.
As its own process (``python -m tests.support.otlp_receiver --port N``, for benchmarks) it only counts spans."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str  # "CLIENT", "SERVER", ...
    service: str
    attributes: dict[str, Any]
    events: tuple[str, ...]
    status: str  # "UNSET", "OK", "ERROR"
    resource: dict[str, Any] = field(default_factory=dict)


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, *, keep: bool = True) -> None:
        self.spans: list[ReceivedSpan] = []
        self.count = 0
        self.port = 0
        self._keep = keep
        self._arrived = asyncio.Event()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def Export(  # noqa: N802
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.count += len(scope_spans.spans)
                for span in scope_spans.spans if self._keep else ():
                    self.spans.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex() or None,
                            name=span.name,
                            kind=trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            service=str(resource.get("service.name", "")),
                            attributes=_attributes(span.attributes),
                            events=tuple(event.name for event in span.events),
                            status=trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                            resource=resource,
                        )
                    )
        self._arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    async def wait_for(self, trace_id: str, count: int, timeout_s: float = 30.0) -> list[ReceivedSpan]:
        """The spans of `trace_id` once at least `count` have arrived (a bound on waiting, not a timing check)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while len(self.trace(trace_id)) < count:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(0.0, give_up - loop.time()))
            except TimeoutError:
                break
        return self.trace(trace_id)


@contextlib.asynccontextmanager
async def otlp_receiver(port: int = 0, *, keep: bool = True) -> AsyncIterator[Receiver]:
    """The receiver serving on 127.0.0.1:`port` (0: a free one) until the block ends; `keep` False only counts."""
    receiver = Receiver(keep=keep)
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    receiver.port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield receiver
    finally:
        await server.stop(None)


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="an OTLP/gRPC trace receiver that counts the spans it is sent")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    async with otlp_receiver(args.port, keep=False) as receiver:
        print(f"listening on {receiver.port}", flush=True)
        await asyncio.Event().wait()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(sys.argv[1:])))
