"""Tracing setup from config and the standard OTEL_* variables: when it is on, what the resource and sampler
are, and that a full export queue drops spans (and counts them) instead of making a call wait."""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased

from meshlet.config import TelemetryConfig
from meshlet.errors import ConfigError
from meshlet.telemetry.span_file import JsonLinesSpanExporter
from meshlet.telemetry.tracing import CountingBatchSpanProcessor, ParentRatioSampler, build_tracing


def test_tracing_is_off_when_nothing_would_receive_the_spans(tmp_path: Path) -> None:
    assert build_tracing(TelemetryConfig(), service="orders", env={}) is None
    disabled = {"OTEL_SDK_DISABLED": "true"}
    assert build_tracing(TelemetryConfig(span_file=tmp_path / "s.jsonl"), service="orders", env=disabled) is None


def test_a_span_file_turns_tracing_on_with_the_service_as_resource(tmp_path: Path) -> None:
    config = TelemetryConfig(span_file=tmp_path / "spans.jsonl", sample_ratio=0.25)
    tracing = build_tracing(config, service="orders", face="sidecar", env={})
    assert tracing is not None
    try:
        attributes = tracing.provider.resource.attributes
        assert attributes["service.name"] == "orders"
        assert str(attributes["service.instance.id"]).startswith("orders-")
        assert attributes["meshlet.face"] == "sidecar"
        version = importlib.metadata.version("meshlet")
        assert (attributes["service.version"], attributes["meshlet.version"]) == (version, version)
        sampler = tracing.provider.sampler
        assert isinstance(sampler, ParentRatioSampler)
        assert sampler.ratio == 0.25
    finally:
        tracing.shutdown()


def test_the_sdks_own_otel_variables_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=dev,service.version=2.3.1")
    config = TelemetryConfig(service_name="orders-api")
    tracing = build_tracing(config, service="orders", exporters=[InMemorySpanExporter()])
    assert tracing is not None
    try:
        attributes = tracing.provider.resource.attributes
        assert attributes["service.name"] == "orders-api"  # telemetry.service_name (default $OTEL_SERVICE_NAME)
        assert attributes["deployment.environment"] == "dev"
        assert attributes["service.version"] == "2.3.1"  # the app's own version wins over meshlet's
        assert not isinstance(tracing.provider.sampler, ParentBased)  # the SDK's, from OTEL_TRACES_SAMPLER
    finally:
        tracing.shutdown()


class BatchRecorder(SpanExporter):
    def __init__(self) -> None:
        self.batches: list[int] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches.append(len(spans))
        return SpanExportResult.SUCCESS


def test_the_export_batch_size_variable_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    recorder = BatchRecorder()
    tracing = build_tracing(TelemetryConfig(), service="orders", exporters=[recorder])
    assert tracing is not None
    try:
        for i in range(5):
            tracing.tracer.start_span(f"s{i}").end()
        tracing.provider.force_flush()
        assert sum(recorder.batches) == 5
        assert max(recorder.batches) == 2
    finally:
        tracing.shutdown()


class StuckExporter(SpanExporter):
    """A collector that is away: an export hangs until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.started.set()
        self.release.wait(10)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def test_a_full_queue_drops_spans_and_counts_them_without_waiting() -> None:
    exporter = StuckExporter()
    processor = CountingBatchSpanProcessor(exporter, max_queue_size=10)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    try:
        for _ in range(10):
            tracer.start_span("call").end()
        assert exporter.started.wait(10)  # the worker holds the first batch, stuck in export
        for _ in range(90):  # none of these waits for the stuck exporter
            tracer.start_span("call").end()
        assert processor.dropped == 80  # 10 in the worker's hands, 10 queued, the rest dropped
    finally:
        exporter.release.set()
        provider.shutdown()
    assert exporter.exported + processor.dropped == 100


async def test_closing_hands_over_queued_spans_but_never_waits_on_a_collector_that_is_away() -> None:
    stuck = StuckExporter()
    tracing = build_tracing(TelemetryConfig(), service="orders", exporters=[stuck], env={})
    assert tracing is not None
    tracing.tracer.start_span("call").end()
    try:
        await tracing.aclose(timeout_s=0.2)  # returns although the export is still hanging
        assert stuck.exported == 0
    finally:
        stuck.release.set()

    flushed = InMemorySpanExporter()
    tracing = build_tracing(TelemetryConfig(), service="orders", exporters=[flushed], env={})
    assert tracing is not None
    tracing.tracer.start_span("call").end()
    await tracing.aclose()
    assert [span.name for span in flushed.get_finished_spans()] == ["call"]


def test_a_span_file_that_cannot_be_written_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"telemetry\.span_file .*cannot be written"):
        JsonLinesSpanExporter(blocker / "spans.jsonl")  # its "directory" is a file
