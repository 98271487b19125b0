"""The one trace the demo shows: a checkout that succeeded because the mesh retried something under it.

Spans come from the span files every process of the run writes (``telemetry.span_file``). Unlike
``meshlet trace``, which shows the most retried trace whatever its end, the demo prefers one whose caller got an
answer: that is the story of a mesh masking a fault. `pick_trace` is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import RenderableType

from meshlet.demo.topology import SPAN_SUFFIX
from meshlet.telemetry.span_file import SpanFileError, SpanRecord, load_spans
from meshlet.telemetry.waterfall import duration_ns, render_waterfall, retries_in, traces


@dataclass(frozen=True)
class PickedTrace:
    trace_id: str
    spans: tuple[SpanRecord, ...]
    retries: int
    duration_s: float
    answered: bool = True  # the caller got an OK


def _answered(spans: Sequence[SpanRecord]) -> bool:
    """Whether the trace's root span (the traffic driver's call) ended without an error."""
    roots = [span for span in spans if span.parent_id is None] or list(spans[:1])
    return not any(span.status == "ERROR" for span in roots)


def pick_trace(spans: Iterable[SpanRecord]) -> PickedTrace | None:
    """Among the traces that ended well, the one with the most retries (the longest on a tie); else the longest."""
    grouped = traces(spans)
    if not grouped:
        return None

    def rank(trace_id: str) -> tuple[bool, int, int]:
        members = grouped[trace_id]
        return _answered(members), retries_in(members), duration_ns(members)

    trace_id = max(grouped, key=rank)
    members = grouped[trace_id]
    return PickedTrace(
        trace_id, tuple(members), retries_in(members), duration_ns(members) / 1e9, answered=_answered(members)
    )


def load_run_spans(folder: Path) -> list[SpanRecord] | str:
    """Every span the run's processes wrote, or why there are none (a sentence for the report)."""
    paths = sorted(folder.glob(f"*{SPAN_SUFFIX}"))
    if not paths:
        return "no traces collected: no process wrote a span file (telemetry.span_file)"
    try:
        spans = load_spans(paths)
    except SpanFileError as error:
        return f"no traces collected: {error}"
    return spans if spans else "no traces collected: the span files are empty"


def render_trace(picked: PickedTrace) -> RenderableType:
    return render_waterfall(list(picked.spans))
