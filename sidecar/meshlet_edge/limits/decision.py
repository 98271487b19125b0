"""The arithmetic of a rate-limit decision, shared by both stores: a token bucket (`rate_per_s`, `burst`) and
quotas over fixed calendar windows in UTC (`per_minute`: the clock's minute, `per_day`: from 00:00 UTC,
`per_month`: from the 1st, 00:00 UTC). A request of cost `c` passes when the bucket holds `c` tokens and every
window has `c` left; then all of them are charged together, and when any refuses, none is (a refused request
costs nothing). The in-process store runs `decide` itself; the Redis store's Lua script
(meshlet_edge.limits.redis_store) is the same steps, line for line, and hands back the same `Outcome`. What the
answer says about it (RateLimit headers, Retry-After, the QuotaFailure) is computed from the `Outcome` here too.
Pure: time is an argument.
"""

from __future__ import annotations

import calendar
import datetime
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Window = Literal["minute", "day", "month"]
WINDOWS: tuple[Window, ...] = ("minute", "day", "month")
BUCKET = "rate"  # what `Outcome.refused_by` names when the token bucket refused


@dataclass(frozen=True, slots=True)
class Quota:
    window: Window
    limit: int


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    rate_per_s: float | None  # None: no token bucket, only the quotas
    burst: int
    quotas: tuple[Quota, ...]  # in WINDOWS' order

    @property
    def refill_s(self) -> float:
        """Seconds for an empty bucket to fill up again."""
        return self.burst / self.rate_per_s if self.rate_per_s else 0.0


@dataclass(frozen=True, slots=True)
class Span:
    """One calendar window: its start (epoch seconds), its end, and the label its counter is stored under."""

    start: float
    end: float
    label: str


def window_span(window: Window, now: float) -> Span:
    """The calendar window of `now` (epoch seconds) in UTC."""
    return _span(window, math.floor(now))


@functools.lru_cache(maxsize=64)  # every request of a second asks for the same few windows
def _span(window: Window, second: int) -> Span:
    moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
    if window == "minute":
        start = moment.replace(second=0, microsecond=0)
        end = start + datetime.timedelta(minutes=1)
        label = start.strftime("%Y%m%d%H%M")
    elif window == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + datetime.timedelta(days=1)
        label = start.strftime("%Y%m%d")
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start + datetime.timedelta(days=calendar.monthrange(start.year, start.month)[1])
        label = start.strftime("%Y%m")
    return Span(start.timestamp(), end.timestamp(), label)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision as a store reports it: what refused (None: allowed), the bucket's tokens after it (or None
    without a bucket) and each quota's count after it, in the plan's order."""

    refused_by: str | None
    tokens: float | None
    used: tuple[int, ...]


def refill(plan: Plan, tokens: float | None, updated_at: float | None, now: float) -> float:
    """The bucket's tokens at `now`: full when never used; a clock behind `updated_at` (another replica's, a
    little ahead) adds nothing rather than taking away."""
    if tokens is None or updated_at is None or plan.rate_per_s is None:
        return float(plan.burst)
    return min(float(plan.burst), tokens + max(0.0, now - updated_at) * plan.rate_per_s)


def decide(plan: Plan, tokens: float, used: Sequence[int], cost: int) -> Outcome:
    """Charge `cost` to the refilled bucket and to each window's count, all or none."""
    refused_by: str | None = None
    if plan.rate_per_s is not None and tokens < cost:
        refused_by = BUCKET
    else:
        for quota, count in zip(plan.quotas, used, strict=True):
            if count + cost > quota.limit:
                refused_by = quota.window
                break
    if refused_by is not None or cost == 0:
        return Outcome(refused_by, tokens if plan.rate_per_s is not None else None, tuple(used))
    left = tokens - cost if plan.rate_per_s is not None else None
    return Outcome(None, left, tuple(count + cost for count in used))


@dataclass(frozen=True, slots=True)
class Standing:
    """One limit's state for the answer's headers: its size, what is left, seconds until it is whole again,
    and its policy item (``10;w=1``)."""

    name: str
    limit: int
    remaining: int
    reset_s: float
    policy: str


def standings(plan: Plan, outcome: Outcome, now: float) -> list[Standing]:
    """Each of the plan's limits after the decision: the bucket first, then the quotas."""
    found = []
    if plan.rate_per_s is not None and outcome.tokens is not None:
        missing = plan.burst - outcome.tokens
        window_s = max(1, round(plan.refill_s))
        reset = missing / plan.rate_per_s
        found.append(
            Standing(BUCKET, plan.burst, max(0, math.floor(outcome.tokens)), reset, f"{plan.burst};w={window_s}")
        )
    for quota, count in zip(plan.quotas, outcome.used, strict=True):
        span = window_span(quota.window, now)
        length = round(span.end - span.start)
        left = max(0, quota.limit - count)
        found.append(Standing(quota.window, quota.limit, left, span.end - now, f"{quota.limit};w={length}"))
    return found


def headers(plan: Plan, outcome: Outcome, now: float) -> dict[str, str]:
    """The IETF RateLimit header fields: Limit, Remaining and Reset of the limit nearest to running out (the
    fewest left; of those, the one that stays empty longest), and every limit of the plan in RateLimit-Policy."""
    found = standings(plan, outcome, now)
    if not found:
        return {}
    tightest = min(found, key=lambda s: (s.remaining, -s.reset_s))
    return {
        "RateLimit-Limit": str(tightest.limit),
        "RateLimit-Remaining": str(tightest.remaining),
        "RateLimit-Reset": str(math.ceil(tightest.reset_s)),
        "RateLimit-Policy": ", ".join(s.policy for s in found),
    }


def retry_after_s(plan: Plan, outcome: Outcome, cost: int, now: float) -> float:
    """Seconds until the limit that refused lets a request of `cost` through (0.0 when none refused)."""
    if outcome.refused_by is None:
        return 0.0
    if outcome.refused_by == BUCKET:
        assert plan.rate_per_s is not None
        assert outcome.tokens is not None
        return max(0.0, cost - outcome.tokens) / plan.rate_per_s
    return window_span(outcome.refused_by, now).end - now  # type: ignore[arg-type]


def describe(plan: Plan, refused_by: str) -> str:
    """The refused limit in words, for the QuotaFailure and the message."""
    if refused_by == BUCKET:
        return f"plan {plan.name}: {plan.rate_per_s:g} requests a second (bursts of {plan.burst})"
    limit = next(q.limit for q in plan.quotas if q.window == refused_by)
    return f"plan {plan.name}: {limit} requests per calendar {refused_by} (UTC)"
