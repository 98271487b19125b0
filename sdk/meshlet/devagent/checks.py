"""Placeholder: the agent-run checks (being written)."""

from __future__ import annotations

from meshlet.devagent.state import AgentState


class CheckRunner:
    def __init__(self, state: AgentState, *, reap_interval_s: float, min_deregister_after_s: float) -> None:
        self._state = state

    def reconcile(self) -> None:
        """Start and stop check tasks to match the catalog (called after every write)."""

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
