"""Tracer setup and the RPC vocabulary of meshlet's spans.

`build_tracing` makes one OpenTelemetry SDK TracerProvider per Mesh or sidecar (not the global one: a test may
run several meshes in one process) from ``Config.telemetry`` and the SDK's own ``OTEL_*`` handling: resource
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), sampler (``OTEL_TRACES_SAMPLER[_ARG]``, else parent-based
ratio sampling), OTLP/gRPC export (``OTEL_EXPORTER_OTLP_*``) behind a batch processor, and the JSON-lines span
file. Batching never blocks a call: when the queue is full a span is dropped and counted (`dropped_spans`);
spans the exporter fails to deliver are counted apart, by reason (`failed_exports`).
The pipeline stages (outbound/span.py, outbound/attempt_span.py, inbound/span.py) use the tracer it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextvars import ContextVar
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags, Tracer

from meshlet.config import TelemetryConfig
from meshlet.events import (
    BreakerClosed,
    BreakerHalfOpened,
    BreakerOpened,
    BudgetRefused,
    Event,
    RetryNotAttempted,
    RetryScheduled,
)
from meshlet.telemetry.build import build_labels
from meshlet.telemetry.method_names import UNKNOWN_METHOD, MethodNames
from meshlet.telemetry.span_file import JsonLinesSpanExporter

log = logging.getLogger("meshlet.telemetry")

CLIENT, SERVER, INTERNAL = SpanKind.CLIENT, SpanKind.SERVER, SpanKind.INTERNAL
SPAN_FILE_DELAY_MS = 500  # a span reaches the file within half a second: `meshlet trace` reads a live run
SHUTDOWN_S = 5.0  # at most this long to hand queued spans over when a Mesh or sidecar closes

# OpenTelemetry's RPC conventions: a server span is an error only for these codes; a client span for any non-OK.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_MAX_CACHED_STARTS = 4096
K = TypeVar("K", bound=Hashable)

# The backoff the retry loop is about to sleep, set where RetryScheduled is emitted (in the call's own task) and
# read by the next attempt's span: the attempt that follows a sleep records how long it waited.
BACKOFF_S: ContextVar[float] = ContextVar("meshlet_backoff_s", default=0.0)


class SpanStarts(Generic[K]):
    """What a span of one kind starts with, per key (the method path, with whatever else the stage fixes per
    call site): its name and its attributes, built once per key instead of once per call (bounded, so a sidecar
    fed random paths by a misbehaving app does not grow without end). The attributes are shared between spans:
    the SDK copies them into each span, so nobody may change them.

    With `names`, a method not known to exist starts as ``(unknown)`` (see method_names.py), uncached: the
    stage renames its span when the answer proves the method (`rename_if_answered`)."""

    __slots__ = ("_cache", "_make", "_names")

    def __init__(self, make: Callable[[K], dict[str, Any]], names: MethodNames | None = None) -> None:
        self._cache: dict[K, tuple[str, dict[str, Any]]] = {}
        self._make = make
        self._names = names

    def __call__(self, key: K, path: str) -> tuple[str, dict[str, Any]]:
        """(span name, start attributes) for `key`, whose method is `path`."""
        found = self._cache.get(key)
        if found is None:
            names = self._names
            if names is not None and not names.named(path):
                return UNKNOWN_METHOD, self._make(key)
            found = span_name(path), self._make(key)
            if len(self._cache) < _MAX_CACHED_STARTS:
                self._cache[key] = found
        return found

    def rename_if_answered(self, span: Span, name: str, path: str, answered: bool) -> None:
        """A span started as ``(unknown)`` takes its method's name once an answer proves the method exists."""
        if name is UNKNOWN_METHOD and self._names is not None and self._names.named(path, answered):
            span.update_name(span_name(path))


def rpc_attributes(path: str) -> dict[str, Any]:
    """The RPC conventions' ``rpc.system``, ``rpc.service`` and ``rpc.method`` of ``/pkg.Service/Method``."""
    service, _, method = path.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def span_name(path: str) -> str:
    """``/pkg.Service/Method`` -> ``pkg.Service/Method``, the RPC conventions' span name."""
    return path[1:] if path.startswith("/") else path


def status_of(error: BaseException | None) -> tuple[grpc.StatusCode, str | None]:
    """The gRPC status a finished call (or attempt) ended with: None is OK, cancellation is CANCELLED."""
    if error is None:
        return grpc.StatusCode.OK, None
    if isinstance(error, grpc.aio.AioRpcError):
        code: grpc.StatusCode = error.code()
        return code, error.details()
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "cancelled by the caller"
    return grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"


def end_span(
    span: Span,
    code: grpc.StatusCode,
    message: str | None,
    *,
    server: bool = False,
    attributes: dict[str, Any] | None = None,
) -> None:
    """Record the status (``rpc.grpc.status_code``, and ERROR where the conventions say so) with any last
    `attributes` (one update: each costs the SDK a lock), and end the span."""
    if attributes is None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
    else:
        attributes["rpc.grpc.status_code"] = code.value[0]
        span.set_attributes(attributes)
    if code is not grpc.StatusCode.OK and (not server or code in _SERVER_ERRORS):
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}" if message else code.name))
    span.end()


def end_span_with(
    span: Span, error: BaseException | None, *, server: bool = False, attributes: dict[str, Any] | None = None
) -> None:
    code, message = status_of(error)
    end_span(span, code, message, server=server, attributes=attributes)


# ---------------------------------------------------------------------------------------------- setup


# Why spans handed to an exporter were lost (``meshlet_spans_export_failed_total{reason}``): the exporter gave
# up on them (the OTLP exporter after its own retries: collector unreachable, refusing, or slower than
# OTEL_EXPORTER_OTLP_TIMEOUT), or it raised.
EXPORT_FAILED, EXPORTER_ERROR = "export_failed", "exporter_error"
EXPORT_FAILURE_REASONS = (EXPORT_FAILED, EXPORTER_ERROR)


class _CountingExporter(SpanExporter):
    """Counts the spans the batch worker hands on, so the processor can tell how full its queue is, and those
    the exporter then failed to deliver, by reason (the batch processor itself only logs them)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.handed = 0
        self.failed = dict.fromkeys(EXPORT_FAILURE_REASONS, 0)  # the worker thread writes, a scrape reads

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.handed += len(spans)
        try:
            result = self.exporter.export(spans)
        except Exception:
            self.failed[EXPORTER_ERROR] += len(spans)
            raise
        if result is not SpanExportResult.SUCCESS:
            self.failed[EXPORT_FAILED] += len(spans)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor (a bounded queue and a worker thread: ending a span never waits for export),
    counting the spans it drops when the queue is full, i.e. when the collector is away or too slow."""

    def __init__(
        self, exporter: SpanExporter, *, max_queue_size: int = 2048, schedule_delay_millis: float | None = None
    ) -> None:
        self._counted = _CountingExporter(exporter)
        self.max_queue_size = max_queue_size
        super().__init__(
            self._counted,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=min(_positive_env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), max_queue_size),
        )
        self.accepted = 0
        self.dropped = 0

    @property
    def failed(self) -> dict[str, int]:
        return self._counted.failed

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            if self.accepted - self.dropped - self._counted.handed >= self.max_queue_size:
                self.dropped += 1  # the queue is full: the SDK lets the oldest span go to keep this one
            self.accepted += 1
        super().on_end(span)


class Tracing:
    """One process's (or one Mesh's) tracer, its exporters and the span events it adds for pipeline events."""

    def __init__(self, provider: TracerProvider, processors: Sequence[CountingBatchSpanProcessor]) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("meshlet", _version())
        self._processors = tuple(processors)

    def dropped_spans(self) -> int:
        """Spans dropped because an export queue was full (for ``meshlet_spans_dropped_total``)."""
        return sum(processor.dropped for processor in self._processors)

    def failed_exports(self) -> dict[str, int]:
        """Spans an exporter failed to deliver, by reason (for ``meshlet_spans_export_failed_total``): not the
        queue's overflow, which `dropped_spans` counts."""
        failed = dict.fromkeys(EXPORT_FAILURE_REASONS, 0)
        for processor in self._processors:
            for reason, count in processor.failed.items():
                failed[reason] += count
        return failed

    def on_event(self, event: Event) -> None:
        """An EventBus listener: the event becomes a span event on the span current where it happened (the
        call's for a retry, the attempt's for a breaker that the attempt's outcome opened)."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        match event:
            case RetryScheduled():
                BACKOFF_S.set(event.delay_s)
                span.add_event(
                    "retry.scheduled",
                    {
                        "meshlet.attempt": event.attempt,
                        "meshlet.backoff_s": event.delay_s,
                        "rpc.grpc.status": event.code,
                    },
                )
            case RetryNotAttempted(why="budget"):
                span.add_event(
                    "retry.budget_refused", {"meshlet.attempt": event.attempt, "meshlet.upstream": event.upstream}
                )
            case RetryNotAttempted():
                span.add_event(
                    "retry.not_attempted",
                    {"meshlet.attempt": event.attempt, "meshlet.reason": event.why, "rpc.grpc.status": event.code},
                )
            case BudgetRefused():
                span.add_event("retry.budget_refused", {"meshlet.upstream": event.upstream})
            case BreakerOpened():
                endpoint = str(event.endpoint)
                span.add_event(
                    "breaker.opened", {"meshlet.endpoint": endpoint, "meshlet.reopen_after_s": event.reopen_after_s}
                )
                span.add_event("endpoint.ejected", {"meshlet.endpoint": str(event.endpoint)})
            case BreakerHalfOpened():
                span.add_event("breaker.half_open", {"meshlet.endpoint": str(event.endpoint)})
            case BreakerClosed():
                span.add_event("breaker.closed", {"meshlet.endpoint": str(event.endpoint)})
            case _:
                pass

    def force_flush(self) -> None:
        self.provider.force_flush()

    def shutdown(self) -> None:
        """Export what is queued (bounded by the exporters' timeouts) and stop the workers."""
        self.provider.shutdown()

    async def aclose(self, timeout_s: float = SHUTDOWN_S) -> None:
        """`shutdown` without holding the event loop, and without holding a drain longer than `timeout_s`: a
        collector that is away would keep the exporter retrying. Spans still unsent then are lost; the thread
        doing the shutdown is a daemon, so it never keeps the process from exiting."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def shut_down() -> None:
            try:
                self.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed first: nobody is waiting any more
                    loop.call_soon_threadsafe(done.set)

        threading.Thread(target=shut_down, name="meshlet-tracing-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(done.wait(), timeout_s)
        except TimeoutError:
            log.warning("spans still unsent after %.0fs were dropped: the collector did not take them", timeout_s)


def build_tracing(
    telemetry: TelemetryConfig,
    *,
    service: str | None,
    face: str = "sdk",
    exporters: Sequence[SpanExporter] = (),
    env: Mapping[str, str] | None = None,
) -> Tracing | None:
    """The tracing `telemetry` asks for, or None (tracing off: the stages are left out) when nothing would
    receive the spans: no OTLP endpoint, no span file and no extra `exporters` (tests pass an in-memory one),
    or ``OTEL_SDK_DISABLED=true``."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    otlp_endpoint = telemetry.otlp_endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    all_exporters = list(exporters)
    file_exporters: list[SpanExporter] = []
    if otlp_endpoint:
        all_exporters.append(_otlp_exporter(otlp_endpoint))
    if telemetry.span_file is not None:
        file_exporters.append(JsonLinesSpanExporter(Path(telemetry.span_file)))
    if not all_exporters and not file_exporters:
        return None
    name = telemetry.service_name or service or "unknown_service"
    attributes = {SERVICE_NAME: name, SERVICE_INSTANCE_ID: f"{name}-{socket.gethostname()}-{os.getpid()}"}
    resource = Resource.create({**attributes, "meshlet.face": face, "meshlet.version": build_labels()["version"]})
    if SERVICE_VERSION not in resource.attributes:  # the app's own, when OTEL_RESOURCE_ATTRIBUTES names it
        resource = resource.merge(Resource({SERVICE_VERSION: build_labels()["version"]}))
    provider = TracerProvider(resource=resource, sampler=_sampler(telemetry.sample_ratio, env))
    queue = _queue_size(env)
    processors = [CountingBatchSpanProcessor(exporter, max_queue_size=queue) for exporter in all_exporters]
    processors += [
        CountingBatchSpanProcessor(exporter, max_queue_size=queue, schedule_delay_millis=SPAN_FILE_DELAY_MS)
        for exporter in file_exporters
    ]
    for processor in processors:
        provider.add_span_processor(processor)
    return Tracing(provider, processors)


def _queue_size(env: Mapping[str, str]) -> int:
    """``OTEL_BSP_MAX_QUEUE_SIZE`` as the SDK reads it (2048 when unset or not a positive number)."""
    return _positive_env("OTEL_BSP_MAX_QUEUE_SIZE", 2048, env)


def _positive_env(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    """An ``OTEL_BSP_*`` size as the SDK reads it: `default` when unset or not a positive number. The batch size
    is passed explicitly (it may not exceed the queue, which the SDK would refuse), so it is read here too."""
    try:
        size = int((os.environ if env is None else env).get(name, str(default)))
    except ValueError:
        return default
    return size if size > 0 else default


def _sampler(ratio: float, env: Mapping[str, str]) -> Sampler | None:
    """``OTEL_TRACES_SAMPLER`` when set (None lets the SDK read it), else parent-based ratio sampling."""
    if env.get("OTEL_TRACES_SAMPLER"):
        return None
    return ParentRatioSampler(ratio)


class ParentRatioSampler(ParentBased):
    """The SDK's ParentBased(TraceIdRatioBased(ratio)): a call follows its caller's decision, and a new trace is
    sampled with probability `ratio`. Its decisions are known before any span exists (see `Unrecorded`)."""

    def __init__(self, ratio: float) -> None:
        super().__init__(TraceIdRatioBased(ratio))
        self.ratio = ratio


class Unrecorded:
    """Tells a stage, before it asks the SDK for a span, that the span would not be recorded: the caller's trace
    is not sampled, or there is no caller's trace and new traces never are (ratio 0). Those calls then cost no
    span at all, only the caller's context passed on as it came; the SDK would have decided the same (that is
    what ParentBased does) and built a non-recording span for it. With any other sampler (``OTEL_TRACES_SAMPLER``)
    it never answers yes, and the SDK decides every call."""

    __slots__ = ("_known", "_new_traces")

    def __init__(self, tracer: Tracer) -> None:
        sampler = getattr(tracer, "sampler", None)
        self._known = isinstance(sampler, ParentRatioSampler)
        self._new_traces = not isinstance(sampler, ParentRatioSampler) or sampler.ratio > 0

    def __call__(self, parent: SpanContext) -> bool:
        if not self._known:
            return False
        if parent.is_valid:
            return not parent.trace_flags.sampled
        return not self._new_traces


_IDS = RandomIdGenerator()


def unsampled_root() -> Context:
    """A new trace that is not sampled, as the SDK's tracer would make for it (random ids, sampled flag off),
    without building a span: what a call that ratio 0 leaves unrecorded tells the next hops."""
    ids = SpanContext(_IDS.generate_trace_id(), _IDS.generate_span_id(), is_remote=False, trace_flags=TraceFlags(0))
    return trace.set_span_in_context(NonRecordingSpan(ids))


def _otlp_exporter(endpoint: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    insecure = None
    if endpoint.startswith("http://"):
        insecure = True
    elif "://" not in endpoint:
        endpoint, insecure = f"http://{endpoint}", True  # host:port, as Jaeger's docs write it: plaintext
    return OTLPSpanExporter(endpoint=endpoint, insecure=insecure)


def _version() -> str:
    try:
        return metadata.version("meshlet")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"
