"""The report says what was measured and says "not measured" for what a build does not export; it never fails."""

from __future__ import annotations

from rich.console import Console

from meshlet.demo import scrape
from meshlet.demo.report import Findings, render
from meshlet.demo.stats import CHECKOUT, ORDER, STOCK, HttpSeen, Outcome, Tally, verdict
from meshlet.demo.timeline import Event, Snapshot

A, B = "127.0.0.1:4001", "127.0.0.1:4002"
ORDERS_PAGE = """\
# TYPE meshlet_attempts_total counter
meshlet_attempts_total{service="inventory",method="m",code="OK"} 95
meshlet_attempts_total{service="inventory",method="m",code="UNAVAILABLE"} 5
# TYPE meshlet_retries_total counter
meshlet_retries_total{service="inventory",method="m"} 5
"""


def text_of(findings: Findings) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(render(findings))
    return console.export_text()


def findings(**overrides: object) -> Findings:
    tally = Tally()
    for i in range(100):
        tally.record(Outcome(i * 0.1, 0.020, "OK"))
    values: dict[str, object] = {
        "duration_s": 10.0,
        "rate": 10.0,
        "tally": tally,
        "verdict": verdict(tally),
        "endpoints": {A: "inventory-1", B: "inventory-2"},
        **overrides,
    }
    return Findings(**values)  # type: ignore[arg-type]


def test_the_report_shows_callers_success_retries_latency_and_the_verdict() -> None:
    snapshots = [Snapshot(0.0, frozenset({A, B})), Snapshot(1.0, frozenset({A}), {A: 2})]
    text = text_of(
        findings(
            metrics={"orders": scrape.parse(ORDERS_PAGE)},
            snapshots=snapshots,
            events=[Event(0.5, "fault", "inventory-2 killed")],
        )
    )

    assert "100.00%" in text  # what the callers saw
    assert "95.00%" in text  # orders -> inventory attempts
    assert "inventory-2 killed" in text
    assert "20 ms" in text  # p50
    assert "verdict: PASS" in text
    assert "█▒" in text  # inventory-1: serving, then ejected
    assert "█░" in text  # inventory-2: serving, then out of Consul's passing set


def test_what_a_build_does_not_export_reads_not_measured() -> None:
    text = text_of(findings(trace="no traces collected: no process wrote a span file"))

    assert "not measured" in text
    assert "no traces collected" in text
    assert "timeline: no samples taken" in text
    assert "verdict: PASS" in text


def test_a_failing_run_says_why() -> None:
    tally = Tally()
    tally.record(Outcome(0.0, 2.0, "DEADLINE_EXCEEDED"))

    text = text_of(findings(tally=tally, verdict=verdict(tally)))

    assert "verdict: FAIL" in text
    assert "DEADLINE_EXCEEDED x1" in text


def test_breaker_openings_are_the_upstreams_total_including_endpoints_that_left() -> None:
    """Inventory-2 left Consul right after its breaker opened: its per-endpoint series went, the total stayed."""
    page = ORDERS_PAGE + (
        "# TYPE meshlet_breaker_transitions_total counter\n"
        f'meshlet_breaker_transitions_total{{service="inventory",endpoint="{A}",state="open"}} 2\n'
        "# TYPE meshlet_breaker_openings_total counter\n"
        'meshlet_breaker_openings_total{service="inventory"} 3\n'
    )
    text = text_of(findings(metrics={"orders": scrape.parse(page)}))

    (row,) = [line for line in text.splitlines() if "│ orders → inventory " in line]
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == ["orders → inventory", "5", "0", "3"]


def test_the_http_callers_row_counts_answers_by_status_with_percentiles_of_the_2xx() -> None:
    seen = HttpSeen()
    for i in range(9):
        seen.routes[CHECKOUT].record(Outcome(i, 0.040, "200"))
    seen.routes[CHECKOUT].record(Outcome(9, 2.0, "503"))
    seen.routes[ORDER].record(Outcome(0, 0.005, "200"))

    text = text_of(findings(http=seen))

    assert "HTTP/JSON callers through meshlet-edge" in text
    assert "200 x9, 503 x1" in text
    assert "40 ms" in text  # the 503's 2 s is no part of the 2xx percentiles
    assert "2000 ms" not in text


def test_the_http_table_says_how_many_stock_reads_the_edges_cache_answered() -> None:
    seen = HttpSeen(cache_store="redis://127.0.0.1:6390/0")
    for i in range(10):
        seen.routes[STOCK].record(Outcome(i, 0.002, "200"))
    seen.cache.update({"hit": 7, "miss": 2, "collapsed": 1})

    text = " ".join(text_of(findings(http=seen)).split())  # the caption wraps

    assert "GET /v2/inventory/items/{sku}" in text
    assert "in Redis at redis://127.0.0.1:6390/0" in text
    assert "7 of 10 stock reads were hits" in text
    assert "bypassed" not in text


def test_cache_bypasses_are_said_and_a_run_without_stock_reads_has_no_cache_line() -> None:
    seen = HttpSeen()
    seen.cache.update({"hit": 1, "bypass": 3})
    text = " ".join(text_of(findings(http=seen)).split())
    assert "in its process" in text
    assert "3 bypassed it" in text
    assert "stock reads" not in text_of(findings(http=HttpSeen()))


def test_a_run_without_an_edge_has_no_http_row() -> None:
    assert "meshlet-edge" not in text_of(findings())
