"""Spans as JSON lines in a local file: what `meshlet trace` and the demo read when there is no Jaeger.

One span per line, written by a batch processor's worker thread (never on a call's path), with what a waterfall
needs: ids, name, kind, times, status, attributes, events and the service that recorded it. `SpanRecord` is the
same span read back.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from meshlet.errors import ConfigError

SERVICE_NAME = "service.name"


def encode(span: ReadableSpan) -> dict[str, Any]:
    context = span.context
    parent = span.parent
    resource = span.resource.attributes if span.resource is not None else {}
    return {
        "trace_id": f"{context.trace_id:032x}" if context is not None else "",
        "span_id": f"{context.span_id:016x}" if context is not None else "",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "status_message": span.status.description,
        "service": resource.get(SERVICE_NAME, ""),
        "face": resource.get("meshlet.face", ""),
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": event.name, "time_ns": event.timestamp, "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
    }


class JsonLinesSpanExporter(SpanExporter):
    """Append each exported span to `path` as one JSON object per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        except OSError as error:
            raise ConfigError(
                "telemetry.span_file", str(path), f"cannot be written ({error.strerror or error}): give a writable path"
            ) from None
        self._lock = threading.Lock()  # export may run from the worker and from a flush at once

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(encode(span), default=str) + "\n" for span in spans)
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass(frozen=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpanRecord:
    """One span as read back from a span file."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    status_message: str | None = None
    face: str = ""  # "sdk" or "sidecar": which kind of meshlet process recorded the span

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpanRecord:
        return cls(
            trace_id=str(data["trace_id"]),
            span_id=str(data["span_id"]),
            parent_id=data.get("parent_id"),
            name=str(data["name"]),
            kind=str(data.get("kind", "INTERNAL")),
            start_ns=int(data["start_ns"]),
            end_ns=int(data.get("end_ns") or data["start_ns"]),
            status=str(data.get("status", "UNSET")),
            service=str(data.get("service", "")),
            attributes=dict(data.get("attributes") or {}),
            events=tuple(
                SpanEvent(str(e["name"]), int(e["time_ns"]), dict(e.get("attributes") or {}))
                for e in data.get("events") or ()
            ),
            status_message=data.get("status_message"),
            face=str(data.get("face") or ""),
        )


class SpanFileError(ValueError):
    """A span file that cannot be read, with the path and line that say where."""


def read_span_file(path: Path) -> Iterator[SpanRecord]:
    """The spans in one file; a line cut short by a process still writing (the last one) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SpanFileError(
            f"{path}: cannot be read ({error.strerror}); pass a span file (telemetry.span_file)"
        ) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield SpanRecord.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError) as error:
            if number == len(lines):
                return  # the writer may be mid-line
            raise SpanFileError(f"{path}:{number}: not a span record ({error}); is this a meshlet span file?") from None


def load_spans(paths: Iterable[Path | str]) -> list[SpanRecord]:
    """Every span in `paths` (the files of all the processes of one run), in start order."""
    spans = [span for path in paths for span in read_span_file(Path(path))]
    spans.sort(key=lambda span: span.start_ns)
    return spans
