"""`meshlet trace`: a trace as a waterfall in the terminal, from span files (``telemetry.span_file``), for
machines without Jaeger. One row per span, indented under its parent, with a bar placed and scaled on the
trace's own time line; attempts are marked with their endpoint, and retries and breaker events are shown inline
where they happened.

Pure over `SpanRecord` values: `load_spans` reads the files, `traces` groups them, `pick_trace` chooses the one
worth looking at, `render_waterfall` returns a rich renderable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from meshlet.telemetry.span_file import SpanEvent, SpanRecord, load_spans

__all__ = ["SpanRecord", "load_spans", "pick_trace", "render_waterfall", "trace_summary", "traces"]

BAR_WIDTH = 48
_CODE_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
    11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}  # fmt: skip
_EVENT_MARKS = {
    "retry.scheduled": "↻",
    "retry.budget_refused": "⊘",
    "retry.not_attempted": "⊘",
    "breaker.opened": "⚡",
    "breaker.half_open": "◐",
    "breaker.closed": "●",
    "endpoint.ejected": "⏏",
}


def traces(spans: Iterable[SpanRecord]) -> dict[str, list[SpanRecord]]:
    """Spans grouped by trace id, each trace in start order."""
    grouped: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        grouped[span.trace_id].append(span)
    for members in grouped.values():
        members.sort(key=lambda span: span.start_ns)
    return dict(grouped)


def retries_in(spans: Sequence[SpanRecord]) -> int:
    """Attempts after the first, over every call in the trace."""
    return sum(1 for span in spans if int(span.attributes.get("meshlet.attempt", 1)) > 1)


def duration_ns(spans: Sequence[SpanRecord]) -> int:
    return max(span.end_ns for span in spans) - min(span.start_ns for span in spans) if spans else 0


def pick_trace(grouped: Mapping[str, Sequence[SpanRecord]]) -> str | None:
    """The trace worth looking at first: the most retried, then the one with the most errors, then the slowest."""
    if not grouped:
        return None

    def weight(trace_id: str) -> tuple[int, int, int]:
        spans = grouped[trace_id]
        return retries_in(spans), sum(span.status == "ERROR" for span in spans), duration_ns(spans)

    return max(grouped, key=weight)


def find_trace(grouped: Mapping[str, Sequence[SpanRecord]], wanted: str) -> str | None:
    """The trace whose id is `wanted` or starts with it (as git takes a short hash), if exactly one does."""
    wanted = wanted.lower()
    matches = [trace_id for trace_id in grouped if trace_id.startswith(wanted)]
    return matches[0] if len(matches) == 1 else None


def trace_summary(spans: Sequence[SpanRecord]) -> str:
    services = sorted({span.service for span in spans if span.service})
    errors = sum(span.status == "ERROR" for span in spans)
    return (
        f"trace {spans[0].trace_id} · {len(spans)} spans · {_ms(duration_ns(spans))} · "
        f"{retries_in(spans)} retries · {errors} errors · {', '.join(services)}"
    )


def ordered(spans: Sequence[SpanRecord]) -> list[tuple[int, SpanRecord]]:
    """(depth, span) in tree order: each span under its parent, siblings by start time. A span whose parent is
    not in the files (a process that wrote none) starts a tree of its own."""
    ids = {span.span_id for span in spans}
    children: dict[str | None, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        children[span.parent_id if span.parent_id in ids else None].append(span)
    rows: list[tuple[int, SpanRecord]] = []
    stack = [(0, span) for span in sorted(children[None], key=lambda s: s.start_ns, reverse=True)]
    while stack:
        depth, span = stack.pop()
        rows.append((depth, span))
        below = sorted(children.get(span.span_id, ()), key=lambda s: s.start_ns, reverse=True)
        stack.extend((depth + 1, child) for child in below)
    return rows


def render_waterfall(spans: Sequence[SpanRecord], *, width: int = BAR_WIDTH) -> RenderableType:
    """One trace's spans as a table: span (indented), service, status, a bar on the trace's time line, duration."""
    if not spans:
        return Text("no spans")
    start = min(span.start_ns for span in spans)
    total = max(1, duration_ns(spans))
    services = [_service(span) for span in spans]
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("span", min_width=30, max_width=72)  # gives way in a narrow terminal (its text is cut)
    table.add_column("service", no_wrap=True, style="cyan", min_width=max(map(len, services)))
    table.add_column("status", no_wrap=True, min_width=max(len(_status(span)) for span in spans))
    table.add_column("timeline", no_wrap=True, min_width=width)
    table.add_column("ms", justify="right", no_wrap=True, min_width=8)
    said_below = _messages_of_failed_children(spans)
    for depth, span in ordered(spans):
        failed = span.status == "ERROR"
        table.add_row(
            _label(depth, span),
            _service(span),
            Text(_status(span), style="red" if failed else "green"),
            _bar(span.start_ns - start, span.duration_ns, total, width, "red" if failed else _colour(span)),
            f"{span.duration_ns / 1e6:.2f}",
        )
        if failed and span.status_message and span.status_message not in said_below.get(span.span_id, ()):
            # why it failed, where it failed: not repeated on the parents that failed with the same words
            table.add_row(_cut("  " * (depth + 1) + f"✗ {span.status_message}", "red"), "", "", "", "")
        for event in span.events:
            table.add_row(
                _cut("  " * (depth + 1) + f"{_EVENT_MARKS.get(event.name, '·')} {_event_text(event)}", "yellow"),
                "",
                "",
                _mark(event.time_ns - start, total, width),
                "",
            )
    return Group(Text(trace_summary(spans), style="bold"), table)


def _messages_of_failed_children(spans: Sequence[SpanRecord]) -> dict[str, set[str]]:
    said: dict[str, set[str]] = defaultdict(set)
    for span in spans:
        if span.parent_id is not None and span.status == "ERROR" and span.status_message:
            said[span.parent_id].add(span.status_message)
    return said


def _label(depth: int, span: SpanRecord) -> Text:
    indent = "  " * depth
    attempt = span.attributes.get("meshlet.attempt")
    if attempt is not None:
        where = span.attributes.get("server.address")
        endpoint = f" → {where}:{span.attributes.get('server.port')}" if where else " → (no endpoint)"
        backoff = float(span.attributes.get("meshlet.backoff_s", 0.0))
        after = f" after {backoff * 1000:.0f} ms backoff" if int(attempt) > 1 else ""
        return _cut(f"{indent}attempt {attempt}{endpoint}{after}", "magenta" if int(attempt) > 1 else "")
    kind = {"INTERNAL": "→", "CLIENT": "→", "SERVER": "⇥"}.get(span.kind, "·")  # INTERNAL: a call, above its attempts
    return _cut(f"{indent}{kind} {span.name}")


def _cut(text: str, style: str = "") -> Text:
    """One line that ends in an ellipsis when the column is narrower, rather than wrapping."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _service(span: SpanRecord) -> str:
    return span.service + (" (sidecar)" if span.face == "sidecar" else "")


def _status(span: SpanRecord) -> str:
    code = span.attributes.get("rpc.grpc.status_code")
    if code is None:
        return span.status
    return _CODE_NAMES.get(int(code), str(code))


def _colour(span: SpanRecord) -> str:
    return {"SERVER": "blue", "CLIENT": "green", "INTERNAL": "green"}.get(span.kind, "white")


def _bar(offset_ns: int, length_ns: int, total_ns: int, width: int, colour: str) -> Text:
    begin = min(width - 1, offset_ns * width // total_ns)
    length = max(1, min(width - begin, round(length_ns * width / total_ns)))
    return Text.assemble(" " * begin, ("█" * length, colour), " " * (width - begin - length))


def _mark(offset_ns: int, total_ns: int, width: int) -> Text:
    at = max(0, min(width - 1, offset_ns * width // total_ns))
    return Text.assemble(" " * at, ("▲", "yellow"), " " * (width - at - 1))


def _event_text(event: SpanEvent) -> str:
    attributes = event.attributes
    details: list[str] = []
    if "meshlet.attempt" in attributes:
        details.append(f"after attempt {attributes['meshlet.attempt']}")
    if "rpc.grpc.status" in attributes:
        details.append(str(attributes["rpc.grpc.status"]))
    if "meshlet.backoff_s" in attributes:
        details.append(f"backoff {float(attributes['meshlet.backoff_s']) * 1000:.0f} ms")
    if "meshlet.endpoint" in attributes:
        details.append(str(attributes["meshlet.endpoint"]))
    if "meshlet.reason" in attributes:
        details.append(str(attributes["meshlet.reason"]))
    return event.name + (f" ({', '.join(details)})" if details else "")


def _ms(nanoseconds: int) -> str:
    return f"{nanoseconds / 1e6:.2f} ms"
