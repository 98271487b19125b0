"""The in-process store (``edge.limits.store: memory``, the default): exact for one edge replica, and per replica
when there are several (each would allow a plan's limit on its own; use Redis to share them). At most
`max_consumers` consumers are kept, the least recently seen forgotten first (a forgotten consumer starts afresh:
the store leans towards letting requests through, never towards refusing them)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from meshlet_edge.limits.decision import Outcome, Plan, decide, refill, window_span

MAX_CONSUMERS = 100_000


@dataclass(slots=True)
class _State:
    plan: str
    tokens: float | None = None
    updated_at: float | None = None
    windows: dict[str, tuple[str, int]] = field(default_factory=dict)  # window -> (its label, count)


class MemoryStore:
    where = "memory"

    def __init__(self, max_consumers: int = MAX_CONSUMERS) -> None:
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._max = max_consumers

    async def charge(self, consumer: str, plan: Plan, cost: int, now: float) -> Outcome:
        return self.charge_now(consumer, plan, cost, now)

    def charge_now(self, consumer: str, plan: Plan, cost: int, now: float) -> Outcome:
        state = self._states.get(consumer)
        if state is None:
            state = _State(plan.name)
        else:
            self._states.move_to_end(consumer)
        tokens = refill(plan, state.tokens, state.updated_at, now)
        labels = [window_span(quota.window, now).label for quota in plan.quotas]
        used = [
            count if (kept := state.windows.get(q.window)) and (count := kept[1]) and kept[0] == label else 0
            for q, label in zip(plan.quotas, labels, strict=True)
        ]
        outcome = decide(plan, tokens, used, cost)
        if outcome.refused_by is None and cost > 0:
            state.plan = plan.name
            if outcome.tokens is not None:
                state.tokens = outcome.tokens
                state.updated_at = now if state.updated_at is None else max(now, state.updated_at)
            for quota, label, count in zip(plan.quotas, labels, outcome.used, strict=True):
                state.windows[quota.window] = (label, count)
            if consumer not in self._states:
                self._states[consumer] = state
                if len(self._states) > self._max:
                    self._states.popitem(last=False)
        return outcome

    async def plan_of(self, consumer: str) -> str | None:
        state = self._states.get(consumer)
        return None if state is None else state.plan

    async def close(self) -> None:
        self._states.clear()
