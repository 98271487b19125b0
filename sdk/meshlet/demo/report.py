"""The demo's report: what the callers saw against what failed underneath, what the mesh did about it, latency,
a timeline per instance and one trace. Pure: `render(findings)` builds rich renderables from what the run
measured; printing them is the runner's job (and the screenshot script's).

Anything a build does not measure yet (no metrics, no span files) reads "not measured" instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from meshlet.demo import scrape, timeline
from meshlet.demo.scrape import Sample
from meshlet.demo.stats import HttpSeen, Tally, Verdict, http_latencies, http_ok, latency_summary
from meshlet.demo.timeline import Cell, Event, Snapshot
from meshlet.demo.traces import PickedTrace, render_trace

CELLS: dict[Cell, tuple[str, str]] = {
    "serving": ("█", "green"),
    "half-open": ("▄", "yellow"),
    "ejected": ("▒", "red"),
    "unhealthy": ("░", "bright_black"),
    "unknown": ("?", "dim"),
}
_SEVERITY: dict[Cell, int] = {"serving": 0, "unknown": 1, "half-open": 2, "ejected": 3, "unhealthy": 4}
MAX_CELLS = 60
WIDTH = 76  # every table at least this wide, so the report reads as one column
NOT_MEASURED = Text("not measured", style="dim")


@dataclass
class Findings:
    """Everything one run measured. `metrics` maps an instance name to the samples of its last scrape."""

    duration_s: float
    rate: float
    tally: Tally
    verdict: Verdict
    endpoints: Mapping[str, str]  # endpoint -> instance name, in display order
    snapshots: Sequence[Snapshot] = ()
    events: Sequence[Event] = ()
    metrics: Mapping[str, Sequence[Sample]] = field(default_factory=dict)
    trace: PickedTrace | str | None = None  # a trace, or why there is none
    jaeger_url: str | None = None
    faults: bool = True
    http: HttpSeen | None = None  # the HTTP callers through meshlet-edge, when the run had an edge


def render(findings: Findings) -> RenderableType:
    parts: list[RenderableType] = [
        Rule("[bold]meshlet demo: what the mesh did[/bold]"),
        _calls(findings),
        *_http(findings),
        _resilience(findings),
        _latency(findings),
        _strips(findings),
        _events(findings),
        *_trace(findings),
        _verdict(findings.verdict),
    ]
    return Group(*parts)


# ---------------------------------------------------------------------------------------------- tables


def _ratio_cells(codes: Mapping[str, float] | None) -> list[RenderableType]:
    if not codes:
        return [NOT_MEASURED, Text(""), Text("")]
    total = sum(codes.values())
    failed = total - codes.get("OK", 0)
    share = 1 - failed / total if total else 1.0
    style = "green" if share >= 0.99 else "yellow" if share >= 0.9 else "red"
    return [Text(f"{total:,.0f}"), Text(f"{failed:,.0f}"), Text(f"{share:.2%}", style=style)]


def _codes_of(findings: Findings, instance_prefix: str, name: str, **where: str) -> dict[str, float] | None:
    """Sum of `name` by code over the instances whose name starts with `instance_prefix`."""
    sums: dict[str, float] = {}
    found = False
    for instance, samples in findings.metrics.items():
        if instance.startswith(instance_prefix) and scrape.has(samples, name):
            found = True
            for code, value in scrape.by_label(samples, name, "code", **where).items():
                sums[code] = sums.get(code, 0.0) + value
    return sums if found else None


def _calls(findings: Findings) -> Table:
    table = Table(title="Success seen by callers vs failures underneath", title_justify="left", min_width=WIDTH)
    table.add_column("where")
    for column in ("calls", "failed", "success"):
        table.add_column(column, justify="right")
    driver = {code: float(n) for code, n in findings.tally.codes.items()}
    rows: list[tuple[str, dict[str, float] | None]] = [
        ("[bold]shop-client → gateway[/bold] (what users see)", driver),
        ("orders → inventory, each attempt", _codes_of(findings, "orders", scrape.ATTEMPTS, service="inventory")),
        (
            "inventory apps, raw (at their sidecars)",
            _codes_of(findings, "inventory", scrape.REQUESTS, direction="inbound"),
        ),
        ("orders → payments, each attempt", _codes_of(findings, "orders", scrape.ATTEMPTS, service="payments")),
    ]
    for label, codes in rows:
        table.add_row(label, *_ratio_cells(codes))
    return table


def _http(findings: Findings) -> list[RenderableType]:
    """What the HTTP callers saw through meshlet-edge: answers by status, p50/p99 of the 2xx ones, per route."""
    if findings.http is None:
        return []
    table = Table(title="HTTP/JSON callers through meshlet-edge", title_justify="left", min_width=WIDTH)
    table.add_column("request")
    for column in ("requests", "2xx", "by status", "p50", "p99"):
        table.add_column(column, justify="right")
    for route, tally in findings.http.routes.items():
        codes = ", ".join(f"{code} x{n}" for code, n in sorted(tally.codes.items())) or "none"
        ok = http_ok(tally)
        style = "green" if tally.done and ok / tally.done >= 0.99 else "yellow" if ok else "red"
        latency = http_latencies(tally)
        cells = [f"{latency[p] * 1000:.0f} ms" for p in ("p50", "p99")] if latency else ["", ""]
        table.add_row(route, f"{tally.done:,}", Text(f"{ok:,}", style=style), codes, *cells)
    table.caption = _cache_caption(findings.http)
    return [table]


def _cache_caption(http: HttpSeen) -> str | None:
    """How many stock reads the edge answered from its cache (Cache-Status: hit), without calling inventory."""
    answered = sum(http.cache.values())
    if not answered:
        return None
    where = "in its process" if http.cache_store == "memory" else f"in Redis at {http.cache_store}"
    hits = http.cache["hit"]
    said = f"the edge's cache ({where}): {hits:,} of {answered:,} stock reads were hits, not sent to inventory"
    bypassed = http.cache["bypass"]
    return f"{said}; {bypassed:,} bypassed it (store errors: see the edge's log)" if bypassed else said


def _counter(findings: Findings, instance: str, name: str, **where: str) -> RenderableType:
    """A counter's sum, 0 when the page is there without the series (a labelled counter appears at its first
    increment); "not measured" when the instance exported no meshlet metrics at all."""
    samples = findings.metrics.get(instance)
    if not samples or not any(sample.name.startswith("meshlet_") for sample in samples):
        return NOT_MEASURED
    return Text(f"{scrape.total(samples, name, **where):,.0f}")


def _resilience(findings: Findings) -> Table:
    table = Table(title="What the mesh did about it", title_justify="left", min_width=WIDTH)
    table.add_column("caller → upstream")
    for column in ("retries", "budget refusals", "breaker openings"):
        table.add_column(column, justify="right")
    for caller, upstream in (("orders", "inventory"), ("orders", "payments"), ("gateway", "orders")):
        table.add_row(
            f"{caller} → {upstream}",
            _counter(findings, caller, scrape.RETRIES, service=upstream),
            _counter(findings, caller, scrape.BUDGET_REFUSALS, service=upstream),
            _counter(findings, caller, scrape.BREAKER_OPENINGS, service=upstream),
        )
    left = sum(1 for event in findings.events if event.text.startswith("left Consul"))
    table.caption = f"instances Consul took out of the balancer (health check failing): {left}"
    return table


def _latency(findings: Findings) -> Table:
    summary = latency_summary(findings.tally.outcomes)
    table = Table(title="Checkout latency seen by callers (successful calls)", title_justify="left", min_width=WIDTH)
    for column in ("p50", "p90", "p99", "max"):
        table.add_column(column, justify="right")
    if summary:
        table.add_row(*(f"{summary[key] * 1000:.0f} ms" for key in ("p50", "p90", "p99", "max")))
    else:
        table.add_row(NOT_MEASURED, "", "", "")
    return table


# ---------------------------------------------------------------------------------------------- timeline


def bucket(cells: Sequence[Cell], width: int = MAX_CELLS) -> list[Cell]:
    """At most `width` cells, each the worst state of the samples it stands for, so a short ejection still shows."""
    if len(cells) <= width:
        return list(cells)
    size = -(-len(cells) // width)
    return [max(cells[i : i + size], key=lambda c: _SEVERITY[c]) for i in range(0, len(cells), size)]


def _strips(findings: Findings) -> RenderableType:
    if not findings.snapshots:
        return Text("timeline: no samples taken", style="dim")
    per = "one cell per second" if len(findings.snapshots) <= MAX_CELLS else f"{MAX_CELLS} cells"
    table = Table(title="Each instance as its callers saw it", title_justify="left", box=None)
    table.add_column("instance")
    table.add_column(f"0 → {findings.duration_s:g}s, {per}", no_wrap=True)
    for endpoint, name in findings.endpoints.items():
        row = Text()
        for state in bucket(timeline.strip(findings.snapshots, endpoint)):
            glyph, style = CELLS[state]
            row.append(glyph, style=style)
        table.add_row(name, row)
    legend = Text("  ")
    for state, (glyph, style) in CELLS.items():
        legend.append(glyph, style=style).append(f" {state}   ")
    return Group(table, legend)


def _events(findings: Findings, limit: int = 24) -> RenderableType:
    if not findings.events:
        return Text("no faults injected and nothing changed" if not findings.faults else "no events", style="dim")
    table = Table(title="Timeline", title_justify="left", box=None, show_header=False)
    table.add_column(justify="right", style="dim")
    table.add_column(style="bold")
    table.add_column()
    shown = list(findings.events)
    hidden = max(0, len(shown) - limit)
    for event in shown[:limit]:
        style = "magenta" if event.who == "fault" else ""
        table.add_row(f"{event.t:5.1f}s", event.who, Text(event.text, style=style))
    if hidden:
        table.add_row("", "", Text(f"… {hidden} more", style="dim"))
    return table


# ---------------------------------------------------------------------------------------------- trace, verdict


def _trace(findings: Findings) -> list[RenderableType]:
    trace = findings.trace
    if trace is None or isinstance(trace, str):
        return [Text(trace or "no traces collected", style="dim")]
    retries = f"{trace.retries} retr{'y' if trace.retries == 1 else 'ies'}"
    if not trace.retries:
        heading = "One checkout (no call in this run needed a retry)"
    else:
        heading = f"One checkout {'answered OK' if trace.answered else 'that failed'} after {retries} under it"
    parts: list[RenderableType] = [
        Text(heading, style="bold"),
        render_trace(trace),
    ]
    if findings.jaeger_url:
        parts.append(Text.assemble("Jaeger: ", (findings.jaeger_url, "link " + findings.jaeger_url)))
    return parts


def _verdict(verdict: Verdict) -> Text:
    if verdict.passed:
        return Text.assemble(("verdict: PASS", "bold green"), f" - {verdict.reason}")
    return Text.assemble(("verdict: FAIL", "bold red"), f" - {verdict.reason}")
