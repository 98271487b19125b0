"""Tracing as the pipelines produce it, over the scripted transport: one CLIENT span per call, one child per
attempt (endpoint, attempt number, status, backoff slept), the context each attempt sends to its server, the
caller's context continued on the inbound side, and nothing recorded for an unsampled call."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshlet.call import InboundCall, matches_any
from meshlet.deadline import Deadline
from meshlet.events import EventBus
from meshlet.inbound import InboundParts, build_inbound
from meshlet.telemetry.logging import JsonFormatter
from meshlet.telemetry.tracing import ParentRatioSampler, Tracing
from meshlet.transport.mesh_channel import MeshChannel
from meshlet.upstream import Upstream
from tests.pipeline.conftest import GET, SERVICE, WATCH, A, B, FakeClock, Rig, policy
from tests.pipeline.scripted import EOF, Stream, reply_from, unavailable

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
GATEWAY = "spiffe://meshlet.local/ns/default/dc/dc1/svc/gateway"


def traceparent(trace_id: str = CALLER_TRACE, span_id: str = CALLER_SPAN, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def parsed(header: str) -> tuple[str, str, bool]:
    """(trace id, parent span id, sampled) of a traceparent header."""
    _version, trace_id, span_id, flags = header.split("-")
    return trace_id, span_id, bool(int(flags, 16) & 1)


class TracedRig(Rig):
    """The pipeline rig with tracing on: spans go to memory, pipeline events become span events."""

    def __init__(self, ratio: float = 1.0, seed: int = 7, tracing: Tracing | None = None, **settings: Any) -> None:
        super().__init__(policy(**settings), seed)
        self.exporter = InMemorySpanExporter()
        if tracing is None:
            provider = TracerProvider(sampler=ParentRatioSampler(ratio))  # the sampler meshlet builds
            provider.add_span_processor(SimpleSpanProcessor(self.exporter))
            tracing = Tracing(provider, [])
        self.tracing = tracing
        bus = EventBus()
        bus.subscribe(self.events.append)
        bus.subscribe(self.tracing.on_event)
        self.untraced = self.upstream
        self.upstream = Upstream(
            SERVICE,
            self.upstream.policy,
            channels=self.transport,
            events=bus,
            clock=self.clock,
            rng=self.untraced._rng,
            sleep=self._sleep,
            tracer=self.tracing.tracer,
        )
        patterns = self.upstream.policy.retry.idempotent
        self.channel = MeshChannel(
            SERVICE,
            self.upstream.handler,
            is_idempotent=lambda path: matches_any(path, patterns),
            replay_limit_bytes=self.upstream.policy.retry.replay_buffer_bytes,
        )

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def call_span(self) -> ReadableSpan:
        (span,) = [s for s in self.spans if s.kind is SpanKind.INTERNAL]
        return span

    def attempt_spans(self) -> list[ReadableSpan]:
        found = [s for s in self.spans if "meshlet.attempt" in (s.attributes or {})]
        return sorted(found, key=lambda s: int((s.attributes or {})["meshlet.attempt"]))  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.untraced.close()
        await self.upstream.close()


@pytest.fixture
async def traced() -> Any:
    rig = TracedRig()
    rig.serve(A, B)
    yield rig
    await rig.close()


def span_id_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def parent_of(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def trace_id_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


# ---------------------------------------------------------------- outbound


async def test_a_call_is_one_internal_span_above_one_client_span_per_attempt(traced: TracedRig) -> None:
    """OpenTelemetry's conventions for retried calls: span-derived RED numbers count each wire attempt once."""
    await traced.unary(GET)

    call = traced.call_span()
    (attempt,) = traced.attempt_spans()
    assert call.name == attempt.name == "shop.inventory.v1.Inventory/GetStock"
    assert call.kind is SpanKind.INTERNAL
    assert attempt.kind is SpanKind.CLIENT
    assert [s.kind for s in traced.spans].count(SpanKind.CLIENT) == 1
    assert call.attributes is not None
    assert call.attributes["rpc.system"] == "grpc"
    assert call.attributes["rpc.service"] == "shop.inventory.v1.Inventory"
    assert call.attributes["rpc.method"] == "GetStock"
    assert call.attributes["rpc.grpc.status_code"] == 0
    assert attempt.parent is not None
    assert attempt.parent.span_id == call.context.span_id
    endpoint = traced.attempts[0].endpoint
    assert attempt.attributes is not None
    assert (attempt.attributes["server.address"], attempt.attributes["server.port"]) == (
        endpoint.address,
        endpoint.port,
    )
    assert attempt.attributes["meshlet.attempt"] == 1


async def test_each_retry_attempt_is_a_child_span_with_its_endpoint_status_and_backoff(traced: TracedRig) -> None:
    traced.transport.then(unavailable())

    assert await traced.unary(GET) == reply_from(traced.attempts[1].endpoint)

    call = traced.call_span()
    first, second = traced.attempt_spans()
    assert [parent_of(first), parent_of(second)] == [span_id_of(call)] * 2
    assert [s for s in traced.spans if s.kind is SpanKind.CLIENT] == [first, second]  # the call itself is INTERNAL
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes["rpc.grpc.status_code"] == 0
    assert [attrs(s)["server.port"] for s in (first, second)] == [a.endpoint.port for a in traced.attempts]
    assert first.attributes["meshlet.backoff_s"] == 0.0
    assert second.attributes["meshlet.backoff_s"] == traced.sleeps[0]
    assert call.attributes is not None
    assert call.attributes["meshlet.attempts"] == 2
    assert [e.name for e in call.events] == ["retry.scheduled"]


async def test_each_attempt_sends_its_own_span_as_the_servers_parent(traced: TracedRig) -> None:
    traced.transport.then(unavailable())

    await traced.unary(GET, metadata=(("x-request-id", "r-1"),))

    for attempt, span in zip(traced.attempts, traced.attempt_spans(), strict=True):
        assert parsed(attempt.header("traceparent")) == (trace_id_of(span), span_id_of(span), True)
        assert [key for key, _ in attempt.metadata].count("traceparent") == 1
        assert attempt.header("x-request-id") == "r-1"


async def test_a_call_made_inside_a_span_is_its_child(traced: TracedRig) -> None:
    with traced.tracing.tracer.start_as_current_span("handler") as handler:
        await traced.unary(GET)

    (call,) = [s for s in traced.spans if s.kind is SpanKind.INTERNAL and s.name != "handler"]
    assert call.parent is not None
    assert call.parent.span_id == handler.get_span_context().span_id


async def test_a_traceparent_in_the_calls_metadata_is_continued_not_forwarded_twice(traced: TracedRig) -> None:
    """The sidecar's outbound side: the app's context arrives as metadata, and the call continues its trace."""
    await traced.unary(GET, metadata=(("traceparent", traceparent()), ("x-app", "1")))

    call = traced.call_span()
    assert trace_id_of(call) == CALLER_TRACE
    assert call.parent is not None
    assert f"{call.parent.span_id:016x}" == CALLER_SPAN
    (sent,) = traced.attempts
    assert [key for key, _ in sent.metadata].count("traceparent") == 1
    assert sent.header("traceparent") != traceparent()
    assert sent.header("x-app") == "1"


async def test_a_handler_forwarding_its_callers_metadata_still_parents_its_call_on_its_own_span(
    traced: TracedRig,
) -> None:
    tracer = traced.tracing.tracer
    with tracer.start_as_current_span("handler") as handler:
        await traced.unary(GET, metadata=(("traceparent", traceparent()), ("x-request-id", "r1")))
    (call,) = [s for s in traced.spans if s.kind is SpanKind.INTERNAL and s.name != "handler"]
    assert call.parent is not None
    assert call.parent.span_id == handler.get_span_context().span_id
    (sent,) = traced.attempts
    assert [key for key, _ in sent.metadata].count("traceparent") == 1
    assert sent.header("x-request-id") == "r1"


async def test_a_stream_call_span_ends_when_the_stream_does(traced: TracedRig) -> None:
    traced.transport.then(Stream([b"one", b"two"]))
    stream = traced.channel.unary_stream(WATCH)(b"request")

    assert await stream.read() == b"one"
    assert traced.spans == []  # the call is still open
    assert await stream.read() == b"two"
    assert await stream.read() is EOF

    assert {s.name for s in traced.spans} == {"shop.inventory.v1.Inventory/WatchStock"}
    assert len(traced.spans) == 2


async def test_a_refused_call_is_a_failed_span_without_an_endpoint(traced: TracedRig) -> None:
    traced.serve()  # nothing passing

    error = await traced.failing(GET)

    call = traced.call_span()
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes is not None
    assert call.attributes["rpc.grpc.status_code"] == error.code().value[0]
    (attempt,) = traced.attempt_spans()
    assert attempt.attributes is not None
    assert "server.address" not in attempt.attributes


async def test_a_breaker_that_opens_is_an_event_on_the_attempt_that_opened_it() -> None:
    rig = TracedRig(breaker={"failures": 1})
    rig.serve(A, B)
    try:
        rig.transport.then(unavailable())
        await rig.unary(GET)
        first, _second = rig.attempt_spans()
        assert "breaker.opened" in [e.name for e in first.events]
    finally:
        await rig.close()


async def test_an_unsampled_call_records_nothing_and_still_propagates_its_decision() -> None:
    rig = TracedRig(ratio=0.0)
    rig.serve(A, B)
    try:
        rig.transport.then(unavailable())
        await rig.unary(GET)
        assert rig.spans == []
        first, second = rig.attempts
        assert first.header("traceparent") == second.header("traceparent")
        assert parsed(first.header("traceparent"))[2] is False
    finally:
        await rig.close()


async def test_a_sampled_caller_is_followed_even_at_ratio_zero() -> None:
    rig = TracedRig(ratio=0.0)
    rig.serve(A)
    try:
        await rig.unary(GET, metadata=(("traceparent", traceparent()),))
        assert trace_id_of(rig.call_span()) == CALLER_TRACE
        (sent,) = rig.attempts
        assert parsed(sent.header("traceparent"))[2] is True
    finally:
        await rig.close()


# ---------------------------------------------------------------- inbound


class FakeContext:
    """The two things ContinueTrace asks of grpc's servicer context: the status set, and when the call ends."""

    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None
        self.callbacks: list[Any] = []

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return None

    def add_done_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def finish(self) -> None:
        for callback in self.callbacks:
            callback(self)


def inbound_call(metadata: Any, context: FakeContext, method: str = GET) -> InboundCall:
    clock = FakeClock()
    return InboundCall(method, metadata, b"request", context, Deadline.after(2.0, clock), GATEWAY, "ipv4:10.0.0.7:5312")


async def test_an_inbound_call_continues_the_callers_trace_as_a_server_span(traced: TracedRig) -> None:
    async def handler(call: InboundCall) -> Any:
        return await traced.unary(GET)  # the servicer's own outbound call

    pipeline = build_inbound(handler, InboundParts(tracer=traced.tracing.tracer))
    await pipeline(inbound_call((("traceparent", traceparent()),), FakeContext()))

    (server,) = [s for s in traced.spans if s.kind is SpanKind.SERVER]
    assert trace_id_of(server) == CALLER_TRACE
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert server.attributes is not None
    assert server.attributes["meshlet.peer.identity"] == GATEWAY
    assert server.attributes["network.peer.address"] == "10.0.0.7"
    assert server.attributes["rpc.grpc.status_code"] == 0
    call = traced.call_span()
    assert call.parent is not None
    assert call.parent.span_id == server.context.span_id
    assert not trace.get_current_span().get_span_context().is_valid  # a unary call leaves nothing current


async def test_an_inbound_span_carries_the_status_the_handler_set(traced: TracedRig) -> None:
    async def handler(call: InboundCall) -> Any:
        call.context.set_code(grpc.StatusCode.NOT_FOUND)

    context = FakeContext()
    await build_inbound(handler, InboundParts(tracer=traced.tracing.tracer))(inbound_call((), context))

    (server,) = traced.spans
    assert server.parent is None
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == 5
    assert server.status.status_code is StatusCode.UNSET  # NOT_FOUND is the app's answer, not a server error


async def test_a_streaming_inbound_span_ends_when_grpc_reports_the_call_done(traced: TracedRig) -> None:
    async def replies() -> Any:
        yield b"one"

    async def handler(call: InboundCall) -> Any:
        return replies()

    context = FakeContext()
    stream = await build_inbound(handler, InboundParts(tracer=traced.tracing.tracer))(inbound_call((), context))
    assert [reply async for reply in stream] == [b"one"]
    assert traced.spans == []
    context.finish()
    assert [s.kind for s in traced.spans] == [SpanKind.SERVER]


async def test_log_lines_inside_a_span_carry_its_ids(traced: TracedRig) -> None:
    record = logging.LogRecord("meshlet", logging.INFO, __file__, 1, "hello", None, None)
    with traced.tracing.tracer.start_as_current_span("handler") as span:
        line = JsonFormatter().format(record)
    context = span.get_span_context()
    assert f'"trace_id": "{context.trace_id:032x}"' in line
    assert f'"span_id": "{context.span_id:016x}"' in line
    assert "trace_id" not in JsonFormatter().format(record)
