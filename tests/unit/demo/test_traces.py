"""The demo shows a checkout that succeeded because the mesh retried under it, not just any slow trace."""

from __future__ import annotations

from meshlet.demo.traces import pick_trace
from meshlet.telemetry.span_file import SpanRecord


def span(trace: str, span_id: str, parent: str | None, start: int, end: int, **attributes: int) -> SpanRecord:
    status = "ERROR" if attributes.pop("error", 0) else "OK"
    return SpanRecord(trace, span_id, parent, "shop.gateway.v1.Gateway/Checkout", "CLIENT", start, end, status,
                      "shop-client", dict(attributes))  # fmt: skip


def test_a_successful_trace_with_retries_wins_over_a_failed_one_with_more() -> None:
    spans = [
        span("failed", "f1", None, 0, 900, error=1),
        span("failed", "f2", "f1", 0, 100, **{"meshlet.attempt": 2}),
        span("failed", "f3", "f1", 0, 100, **{"meshlet.attempt": 3}),
        span("masked", "m1", None, 0, 300),
        span("masked", "m2", "m1", 0, 100, **{"meshlet.attempt": 1}),
        span("masked", "m3", "m1", 100, 300, **{"meshlet.attempt": 2}),
        span("slow", "s1", None, 0, 5000),
    ]

    picked = pick_trace(spans)

    assert picked is not None
    assert picked.trace_id == "masked"
    assert picked.retries == 1
    assert [s.span_id for s in picked.spans] == ["m1", "m2", "m3"]


def test_without_retries_the_longest_successful_trace_is_shown() -> None:
    picked = pick_trace([span("a", "a1", None, 0, 10), span("b", "b1", None, 0, 20)])

    assert picked is not None
    assert picked.trace_id == "b"
    assert picked.retries == 0


def test_no_spans_no_trace() -> None:
    assert pick_trace([]) is None
