"""The runtime of the agent's local checks: TTL deadlines, how long each check has been critical (for reaping)
and how long a changed output has waited to be published. Apart from the catalog's tables because none of it is
persisted (a restart restarts it) and all of it is decided from the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from meshlet.devagent.catalog_records import CRITICAL, Check


class CheckTimers:
    """Keyed by check ID, for local checks only: the agent runs its own checks, not the catalog's others."""

    def __init__(self, clock: Callable[[], float], *, output_sync_interval_s: float) -> None:
        self.clock = clock
        self.output_sync_interval_s = output_sync_interval_s
        self._ttl_deadlines: dict[str, float] = {}
        self._ttl_last_output: dict[str, str] = {}
        self._critical_since: dict[str, float] = {}
        self._output_pending_since: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"CheckTimers(ttl={sorted(self._ttl_deadlines)}, critical={sorted(self._critical_since)})"

    # ------------------------------------------------------------------------------------------ TTLs

    def arm_ttl(self, check: Check) -> None:
        """(Re)start a TTL check's timer: Consul starts it at registration, not at the first update."""
        self._ttl_last_output.pop(check.id, None)
        if check.definition.ttl_s > 0:
            self._ttl_deadlines[check.id] = self.clock() + check.definition.ttl_s
        else:
            self._ttl_deadlines.pop(check.id, None)

    def ttl_updated(self, check: Check, output: str) -> None:
        """A pass/warn/fail/update restarts the timer; its output is what an expiry will quote."""
        self._ttl_last_output[check.id] = output
        self._ttl_deadlines[check.id] = self.clock() + check.definition.ttl_s

    def next_ttl_deadline(self) -> float | None:
        return min(self._ttl_deadlines.values(), default=None)

    def due_ttls(self) -> list[str]:
        """The IDs of the TTL checks whose deadline has passed, sorted."""
        now = self.clock()
        return sorted(cid for cid, deadline in self._ttl_deadlines.items() if deadline <= now)

    def disarm_ttl(self, check_id: str) -> None:
        del self._ttl_deadlines[check_id]

    def expiry_output(self, check_id: str) -> str:
        """What an expired TTL check says: Consul quotes the last output it was given."""
        last = self._ttl_last_output.get(check_id, "")
        return f"TTL expired (last output before timeout follows): {last}" if last else "TTL expired"

    # ------------------------------------------------------------------------------------------ critical time

    def track_critical(self, check: Check) -> None:
        if not check.local:
            return
        if check.status == CRITICAL:
            self._critical_since.setdefault(check.id, self.clock())
        else:
            self._critical_since.pop(check.id, None)

    def critical_for(self, check_id: str) -> float | None:
        since = self._critical_since.get(check_id)
        return None if since is None else self.clock() - since

    def services_to_reap(self, checks: Iterable[Check], min_deregister_after_s: float) -> list[str]:
        """Services with a check critical for longer than its DeregisterCriticalServiceAfter, which is raised
        to `min_deregister_after_s` as Consul raises it to one minute."""
        now = self.clock()
        doomed: set[str] = set()
        for check in checks:
            after = check.definition.deregister_after_s
            since = self._critical_since.get(check.id)
            if not check.service_id or after <= 0 or check.status != CRITICAL or since is None:
                continue
            if now - since > max(after, min_deregister_after_s):
                doomed.add(check.service_id)
        return sorted(doomed)

    # ------------------------------------------------------------------------------------------ outputs

    def hold_output(self, check_id: str) -> bool:
        """For a new output under the same status: True while it must wait to be published, which it does for
        `output_sync_interval_s` from the first such change."""
        now = self.clock()
        pending_since = self._output_pending_since.setdefault(check_id, now)
        return now - pending_since < self.output_sync_interval_s

    def output_published(self, check_id: str) -> None:
        self._output_pending_since.pop(check_id, None)

    # ------------------------------------------------------------------------------------------ lifetime

    def forget(self, check: Check) -> None:
        if check.local:
            for runtime in (
                self._ttl_deadlines,
                self._ttl_last_output,
                self._critical_since,
                self._output_pending_since,
            ):
                runtime.pop(check.id, None)

    def clear(self) -> None:
        for runtime in (self._ttl_deadlines, self._ttl_last_output, self._critical_since, self._output_pending_since):
            runtime.clear()
