"""What the traffic driver saw, summed up: counts by status code, latency percentiles, and the verdict.

Pure: the driver appends `Outcome`s; everything here is arithmetic over them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TARGET = 0.99  # the gateway's callers must see at least this share of successes


@dataclass(frozen=True)
class Outcome:
    started_s: float  # since the traffic began
    latency_s: float
    code: str  # a gRPC status code name


@dataclass
class Tally:
    """Running counts for the progress bar, and every outcome for the report."""

    outcomes: list[Outcome] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    sent: int = 0

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.codes[outcome.code] += 1

    @property
    def done(self) -> int:
        return len(self.outcomes)

    @property
    def ok(self) -> int:
        return self.codes["OK"]

    @property
    def failed(self) -> int:
        return self.done - self.ok

    def success_ratio(self) -> float | None:
        return self.ok / self.done if self.done else None


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (p in 0..100) of `values`, which must not be empty: always a value that was
    seen, as latency reports (HdrHistogram, wrk) give it."""
    if not values:
        raise ValueError("percentile of no values; check that something was measured first")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(outcomes: Iterable[Outcome], ps: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"p50": seconds, ..., "max": seconds}`` over the successful calls; empty when there were none."""
    latencies = [o.latency_s for o in outcomes if o.code == "OK"]
    if not latencies:
        return {}
    summary = {f"p{p:g}": percentile(latencies, p) for p in ps}
    summary["max"] = max(latencies)
    return summary


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def verdict(tally: Tally, target: float = TARGET) -> Verdict:
    """Pass when the gateway's callers saw at least `target` successes; the reason says the numbers either way."""
    ratio = tally.success_ratio()
    if ratio is None:
        return Verdict(False, "no call completed: the mesh never answered the traffic driver")
    seen = f"the gateway's callers saw {ratio:.2%} success ({tally.ok} of {tally.done} calls)"
    if ratio >= target:
        return Verdict(True, f"{seen}, at least the {target:.0%} target")
    worst = ", ".join(f"{code} x{n}" for code, n in tally.codes.most_common() if code != "OK")
    return Verdict(False, f"{seen}, below the {target:.0%} target; failures: {worst}")


# ---------------------------------------------------------------------------------------------- HTTP callers

STOCK = "GET /v2/inventory/items/{sku}"
CHECKOUT = "POST /v1/checkout"
ORDER = "GET /v1/orders/{order_id}"


@dataclass
class HttpSeen:
    """What the HTTP callers (through meshlet-edge) saw, per route; each outcome's code is an HTTP status ("200")
    or, for a request that got no answer, the error's name. `cache` counts the stock reads' answers by the edge
    cache's verdict (`cache_outcome`), and `cache_store` says where the edge kept them ("memory" or Redis)."""

    routes: dict[str, Tally] = field(default_factory=lambda: {STOCK: Tally(), CHECKOUT: Tally(), ORDER: Tally()})
    cache: Counter[str] = field(default_factory=Counter)
    cache_store: str = "memory"

    @property
    def done(self) -> int:
        return sum(tally.done for tally in self.routes.values())

    @property
    def ok(self) -> int:
        return sum(http_ok(tally) for tally in self.routes.values())


def cache_outcome(cache_status: str | None) -> str:
    """An answer's ``Cache-Status`` (RFC 9211, as meshlet-edge writes it) in a word: hit, miss, collapsed (a miss
    that shared another request's upstream call), bypass, or none (no cache rule answered)."""
    if not cache_status:
        return "none"
    params = {part.strip().split("=")[0]: part.strip() for part in cache_status.split(";")[1:]}
    if "hit" in params:
        return "hit"
    if "collapsed" in params:
        return "collapsed"
    forwarded = params.get("fwd", "")
    return forwarded.removeprefix("fwd=") if forwarded in ("fwd=miss", "fwd=bypass") else "none"


def http_ok(tally: Tally) -> int:
    """The 2xx answers in `tally`."""
    return sum(n for code, n in tally.codes.items() if code.startswith("2"))


def http_latencies(tally: Tally, ps: Sequence[float] = (50, 99)) -> dict[str, float]:
    """``{"p50": seconds, "p99": seconds}`` over the 2xx answers; empty when there were none."""
    values = [o.latency_s for o in tally.outcomes if o.code.startswith("2")]
    return {f"p{p:g}": percentile(values, p) for p in ps} if values else {}
