"""Picker: which endpoint the next attempt goes to, chosen from an immutable snapshot of the admitted endpoints.

Discovery and the breakers build a new Picker whenever the set they admit changes (grpc-go: "Balancer is
expected to generate a new picker from its snapshot every time its internal state has changed"), so `pick()`
never blocks, never waits on a lock and costs O(log n). The one piece of state that outlives snapshots is the
in-flight count per endpoint, kept in a `LoadTracker` that every snapshot of an upstream shares.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from bisect import bisect_right, insort
from collections.abc import Collection, Iterable
from typing import Literal

from meshlet.endpoints import Endpoint

Strategy = Literal["p2c", "round_robin"]
STRATEGIES: tuple[Strategy, ...] = ("p2c", "round_robin")

SCHEDULE_TARGET = 4096
"""Round robin precomputes one period of its weighted order; above this many slots weights are scaled down."""


class _InFlight:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class LoadTracker:
    """Calls in flight per endpoint (by address), shared by every Picker snapshot of one upstream.

    The report stage calls `started` when an attempt is sent and `finished` when its reply stream closes;
    pickers read the counts. Keyed by address and port, so a weight or tag change does not lose the count.
    """

    __slots__ = ("_by_address",)

    def __init__(self) -> None:
        self._by_address: dict[tuple[str, int], _InFlight] = {}

    def started(self, endpoint: Endpoint) -> None:
        self._counter(endpoint).n += 1

    def finished(self, endpoint: Endpoint) -> None:
        counter = self._by_address.get((endpoint.address, endpoint.port))
        if counter is not None and counter.n > 0:
            counter.n -= 1

    def in_flight(self, endpoint: Endpoint) -> int:
        counter = self._by_address.get((endpoint.address, endpoint.port))
        return 0 if counter is None else counter.n

    def retain(self, endpoints: Iterable[Endpoint]) -> None:
        """Forget idle endpoints that are no longer in `endpoints` (call it when discovery drops some)."""
        keep = {(e.address, e.port) for e in endpoints}
        for key in [k for k, c in self._by_address.items() if c.n == 0 and k not in keep]:
            del self._by_address[key]

    def _counter(self, endpoint: Endpoint) -> _InFlight:
        key = (endpoint.address, endpoint.port)
        counter = self._by_address.get(key)
        if counter is None:
            counter = self._by_address[key] = _InFlight()
        return counter

    def __repr__(self) -> str:
        total = sum(c.n for c in self._by_address.values())
        return f"<LoadTracker {total} in flight over {len(self._by_address)} endpoints>"


class Picker:
    """An immutable choice over a fixed list of endpoints, weighted by their Consul weight.

    ``p2c``: power of two choices on least in-flight (Finagle's and Envoy's least-request P2C). Two distinct
    endpoints are drawn with probability proportional to weight and the one with fewer calls in flight per
    unit of weight wins; a tie goes to the first drawn, so an idle upstream gets traffic exactly in proportion
    to weight. ``round_robin``: one precomputed period of an earliest-deadline-first order, which interleaves
    heavier endpoints instead of sending them bursts; each snapshot starts at a random place in it (as grpc-go
    does) so clients that rebuild together do not all begin on the same endpoint.

    `pick(avoid)` prefers endpoints that earlier attempts of the same call did not use and falls back to them
    when nothing else is left, so a retry lands elsewhere whenever it can.
    """

    __slots__ = (
        "_cumulative",
        "_endpoints",
        "_index",
        "_loads",
        "_p2c",
        "_period",
        "_random",
        "_schedule",
        "_total",
        "_turn",
        "_weights",
        "strategy",
    )

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        *,
        load: LoadTracker,
        rng: random.Random,
        strategy: Strategy = "p2c",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown balancing strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        self.strategy = strategy
        self._p2c = strategy == "p2c"
        self._endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._index = {(e.address, e.port): i for i, e in enumerate(self._endpoints)}
        self._weights = tuple(max(1, e.weight) for e in self._endpoints)
        self._cumulative = tuple(itertools.accumulate(self._weights))
        self._total = self._cumulative[-1] if self._cumulative else 0
        self._loads = tuple(load._counter(e) for e in self._endpoints)
        self._random = rng.random
        self._schedule = () if self._p2c else _weighted_schedule(self._weights)
        self._period = len(self._schedule)
        self._turn = itertools.count(rng.randrange(self._period) if self._period else 0)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    def __len__(self) -> int:
        return len(self._endpoints)

    def pick(self, avoid: Collection[Endpoint] | None = None) -> Endpoint | None:
        """The endpoint for the next attempt, or None when the snapshot is empty. Never blocks."""
        n = len(self._endpoints)
        if n <= 1:
            return self._endpoints[0] if n else None
        if avoid and (elsewhere := self._pick_avoiding(avoid)) is not None:
            return elsewhere
        if not self._p2c:
            return self._endpoints[self._schedule[next(self._turn) % self._period]]
        # Inlined for speed: a weighted draw, then a second one over the remaining weight that skips the
        # first endpoint's span, so the two are distinct; the one with less in flight per unit of weight wins.
        cumulative, weights, total, draw = self._cumulative, self._weights, self._total, self._random
        a = bisect_right(cumulative, draw() * total, 0, n - 1)
        weight_a = weights[a]
        r = draw() * (total - weight_a)
        if r >= cumulative[a] - weight_a:
            r += weight_a
        b = bisect_right(cumulative, r, 0, n - 1)
        loads = self._loads
        return self._endpoints[b if loads[b].n * weight_a < loads[a].n * weights[b] else a]

    def _pick_avoiding(self, avoid: Collection[Endpoint]) -> Endpoint | None:
        """An endpoint not in `avoid`, or None when every endpoint is in it (then any beats failing the call)."""
        excluded = sorted({i for e in avoid if (i := self._index.get((e.address, e.port))) is not None})
        left = len(self._endpoints) - len(excluded)
        if left == 0:
            return None
        if self._p2c:
            first = self._draw_excluding(excluded)
            if left == 1:
                return self._endpoints[first]
            insort(excluded, first)
            return self._endpoints[self._less_loaded(first, self._draw_excluding(excluded))]
        while True:  # ends within one period: every endpoint has at least one slot in it
            slot = self._schedule[next(self._turn) % self._period]
            if slot not in excluded:
                return self._endpoints[slot]

    def _draw_excluding(self, excluded: list[int]) -> int:
        """A weighted draw over the endpoints not in `excluded` (sorted), by skipping their spans in order."""
        r = self._random() * (self._total - sum(self._weights[i] for i in excluded))
        for i in excluded:
            if r < self._cumulative[i] - self._weights[i]:
                break
            r += self._weights[i]
        return bisect_right(self._cumulative, r, 0, len(self._cumulative) - 1)

    def _less_loaded(self, a: int, b: int) -> int:
        # in_flight(b) / weight(b) < in_flight(a) / weight(a), without dividing
        return b if self._loads[b].n * self._weights[a] < self._loads[a].n * self._weights[b] else a

    def __repr__(self) -> str:
        return f"<Picker {self.strategy} over {len(self._endpoints)} endpoints>"


def _weighted_schedule(weights: tuple[int, ...]) -> tuple[int, ...]:
    """One period of weighted round robin as endpoint indexes: each endpoint's k-th turn falls due at
    (k + 1/2) / weight and turns are taken in order of due time (earliest deadline first, as Envoy does)."""
    if not weights:
        return ()
    divisor = math.gcd(*weights)
    slots = [w // divisor for w in weights]
    total = sum(slots)
    if total > SCHEDULE_TARGET:
        slots = [max(1, round(s * SCHEDULE_TARGET / total)) for s in slots]
    due = [(0.5 / s, i, 0) for i, s in enumerate(slots)]
    heapq.heapify(due)
    order = []
    for _ in range(sum(slots)):
        _, i, turn = due[0]
        order.append(i)
        heapq.heapreplace(due, ((turn + 1.5) / slots[i], i, turn + 1))
    return tuple(order)
