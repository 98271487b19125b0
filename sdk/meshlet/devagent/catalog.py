"""The catalog: nodes, service instances and health checks, with the indexes Consul's state store keeps.

Pure state behind ``/v1/agent``, ``/v1/health`` and ``/v1/catalog``. A write that changes something takes
one Raft index and stamps it on what changed, on the tables it touched (nodes, services, checks) and on
every service name whose health answer changed; a write that changes nothing takes no index, so idle
blocking watchers stay asleep. The agent's own registrations are *local* (listed by ``/v1/agent/*`` and
run by the check runner); ``/v1/catalog/register`` entries are not.

Time comes from the injected clock only: TTL deadlines, how long a check has been critical (for reaping),
and when a check's changed output was last published (Consul's ``check_update_interval``). The tables and
their indexes live in catalog_tables.py, the checks' timers in check_timers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from meshlet.devagent.catalog_records import CONSUL_VERSION, CRITICAL, PASSING, Check, Node, Service
from meshlet.devagent.catalog_tables import CatalogTables, Write
from meshlet.devagent.check_timers import CheckTimers
from meshlet.devagent.raft import RaftIndex

SERF_CHECK_ID = "serfHealth"
SERVICE_MAINTENANCE_PREFIX = "_service_maintenance:"
NODE_MAINTENANCE_ID = "_node_maintenance"
OUTPUT_SYNC_INTERVAL_S = 300.0  # Consul's check_update_interval: how long an output-only change waits
DEFAULT_OUTPUT_MAX_SIZE = 4096  # Consul's DefaultBufSize for check output
SERVICE_MAINTENANCE_DEFAULT = (
    "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
)
NODE_MAINTENANCE_DEFAULT = (
    "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
)


class CatalogError(ValueError):
    """A catalog write Consul's state store refuses (``/v1/catalog/register`` answers it as a 500)."""


def truncate_output(output: str, limit: int) -> str:
    """Consul keeps at most `limit` bytes of a check's output and says how much it dropped."""
    limit = limit or DEFAULT_OUTPUT_MAX_SIZE
    raw = output.encode()
    if len(raw) <= limit:
        return output
    kept = raw[:limit].decode(errors="ignore")
    return f"{kept} ... (captured {limit} of {len(raw)} bytes)"


class Catalog(CatalogTables):
    """Nodes, services and checks of one datacenter, starting as ``consul agent -dev`` does: the agent's
    node with a passing ``serfHealth`` check and the ``consul`` service."""

    def __init__(
        self, index: RaftIndex, *, node: str, node_id: str, datacenter: str, clock: Callable[[], float]
    ) -> None:
        self.node_id = node_id
        self.datacenter = datacenter
        self.clock = clock
        timers = CheckTimers(clock, output_sync_interval_s=OUTPUT_SYNC_INTERVAL_S)
        super().__init__(index, node=node, timers=timers)
        self._bootstrap()

    def _bootstrap(self) -> None:
        node = Node(
            name=self.node,
            id=self.node_id,
            address="127.0.0.1",
            datacenter=self.datacenter,
            tagged_addresses={"lan": "127.0.0.1", "lan_ipv4": "127.0.0.1", "wan": "127.0.0.1", "wan_ipv4": "127.0.0.1"},
            meta={"consul-network-segment": "", "consul-version": CONSUL_VERSION},
        )
        serf = Check(
            node=self.node,
            id=SERF_CHECK_ID,
            name="Serf Health Status",
            status=PASSING,
            output="Agent alive and reachable",
        )
        consul = Service(
            node=self.node,
            id="consul",
            name="consul",
            port=8300,
            meta={
                "non_voter": "false",
                "raft_version": "3",
                "read_replica": "false",
                "serf_protocol_current": "2",
                "serf_protocol_max": "5",
                "serf_protocol_min": "1",
                "version": CONSUL_VERSION,
            },
        )
        self._apply(Write(nodes=[node], services=[consul], checks=[serf]))

    def agent_services(self) -> list[Service]:
        return [s for s in self.node_services(self.node) if s.local]

    def find_agent_service(self, service_id: str) -> Service | None:
        service = self._services.get((self._home, service_id))
        return service if service is not None and service.local else None

    def agent_checks(self) -> list[Check]:
        return [c for c in self.node_checks(self.node) if c.local]

    def find_agent_check(self, check_id: str) -> Check | None:
        check = self._checks.get((self._home, check_id))
        return check if check is not None and check.local else None

    def agent_service_checks(self, service_id: str) -> list[Check]:
        """A local service's checks and the node-level local ones (node maintenance), as the agent sees them."""
        return [c for c in self.agent_checks() if c.service_id in ("", service_id)]

    @property
    def definitions_version(self) -> int:
        """Moves whenever a local check is added, removed or redefined: the runner re-plans only then."""
        return self._definitions_version

    # ------------------------------------------------------------------------------------------ agent writes

    def register_service(
        self, service: Service, checks: Sequence[Check], *, replace_existing_checks: bool = False
    ) -> None:
        """Register a local service with its checks. Checks that exist already keep their status and output;
        the others start as given (critical by default). Other checks of the service stay unless
        `replace_existing_checks`."""
        service = replace(service, node=self.node, local=True)
        fresh = [self._local_check(check, service) for check in checks]
        new_ids = {check.id for check in fresh}
        write = Write(services=[service], checks=fresh)
        for old in self.agent_checks():
            if old.service_id == service.id and old.id not in new_ids:
                if replace_existing_checks:
                    write.drop_checks.append((self._home, old.id))
                else:
                    write.checks.append(replace(old, service_name=service.name, service_tags=service.tags))
        self._apply(write)
        for check in fresh:
            self._timers.arm_ttl(check)

    def register_check(self, check: Check) -> None:
        """Register a local check, node-level or of a local service (the caller checked it exists)."""
        service = self.find_agent_service(check.service_id) if check.service_id else None
        check = self._local_check(check, service)
        self._apply(Write(checks=[check]))
        self._timers.arm_ttl(check)

    def _local_check(self, check: Check, service: Service | None) -> Check:
        check = replace(check, node=self.node, local=True)
        if service is not None:
            check = replace(check, service_id=service.id, service_name=service.name, service_tags=service.tags)
        existing = self._checks.get((self._home, check.id))
        if existing is not None:
            check = replace(check, status=existing.status, output=existing.output)
        return check

    def deregister_service(self, service_id: str) -> bool:
        """Remove a local service and all its checks; False when there is no such local service."""
        if self.find_agent_service(service_id) is None:
            return False
        self._apply(Write(drop_services=[(self._home, service_id)]))
        return True

    def deregister_check(self, check_id: str) -> bool:
        if self.find_agent_check(check_id) is None:
            return False
        self._apply(Write(drop_checks=[(self._home, check_id)]))
        return True

    def update_ttl(self, check_id: str, status: str, output: str) -> None:
        """A pass/warn/fail/update on a local TTL check: set it and restart its TTL."""
        check = self.find_agent_check(check_id)
        assert check is not None, "the caller checks that the check exists"
        output = truncate_output(output, check.definition.output_max_size)
        self._record(check, status, output)
        self._timers.ttl_updated(check, output)

    def record_result(self, check_id: str, status: str, output: str) -> bool:
        """Store what an agent-run check found; False when the check has gone meanwhile."""
        check = self.find_agent_check(check_id)
        if check is None:
            return False
        self._record(check, status, truncate_output(output, check.definition.output_max_size))
        return True

    def _record(self, check: Check, status: str, output: str) -> None:
        """Consul's local-state rules: an unchanged result changes nothing; a new status is published at
        once; a new output under the same status is shown at once but published (given an index, waking
        watchers) only once it has waited OUTPUT_SYNC_INTERVAL_S, so chatty outputs do not churn indexes."""
        if check.status == status and check.output == output:
            return
        if check.status == status and self._timers.hold_output(check.id):
            self._checks[(self._home, check.id)] = replace(check, output=output)
            return
        self._timers.output_published(check.id)
        self._apply(Write(checks=[replace(check, status=status, output=output)]))

    def set_service_maintenance(self, service_id: str, enable: bool, reason: str) -> None:
        service = self.find_agent_service(service_id)
        assert service is not None, "the caller checks the service exists"
        check_id = SERVICE_MAINTENANCE_PREFIX + service_id
        if not enable:
            self.deregister_check(check_id)
        elif self.find_agent_check(check_id) is None:
            maintenance = Check(
                node=self.node,
                id=check_id,
                name="Service Maintenance Mode",
                status=CRITICAL,
                notes=reason or SERVICE_MAINTENANCE_DEFAULT,
                service_id=service_id,
                type="maintenance",
            )
            self.register_check(maintenance)

    def set_node_maintenance(self, enable: bool, reason: str) -> None:
        if not enable:
            self.deregister_check(NODE_MAINTENANCE_ID)
        elif self.find_agent_check(NODE_MAINTENANCE_ID) is None:
            maintenance = Check(
                node=self.node,
                id=NODE_MAINTENANCE_ID,
                name="Node Maintenance Mode",
                status=CRITICAL,
                notes=reason or NODE_MAINTENANCE_DEFAULT,
                type="maintenance",
            )
            self.register_check(maintenance)

    # ------------------------------------------------------------------------------------------ catalog writes

    def catalog_register(
        self, node: Node | None, node_name: str, service: Service | None, checks: Sequence[Check]
    ) -> None:
        """``/v1/catalog/register``: upsert a node (None with ``SkipNodeUpdate``), a service and checks.
        What the agent owns on its own node is left as it is, as Consul's anti-entropy would restore it."""
        key = node_name.lower()
        if node is None and key not in self._nodes:
            raise CatalogError("Missing node registration")
        write = Write(nodes=[node] if node is not None else [])
        if service is not None and not self._agent_owns_service((key, service.id)):
            write.services.append(replace(service, node=node_name))
        for check in checks:
            owner = None
            if check.service_id:
                owner = service if service is not None and service.id == check.service_id else None
                owner = owner or self._services.get((key, check.service_id))
                if owner is None:
                    raise CatalogError(f"Missing service registration for check {check.id!r}")
            if not self._agent_owns_check((key, check.id)):
                check = replace(check, node=node_name)
                if owner is not None:
                    check = replace(check, service_name=owner.name, service_tags=owner.tags)
                write.checks.append(check)
        self._apply(write)

    def catalog_deregister(self, node_name: str, service_id: str = "", check_id: str = "") -> None:
        """``/v1/catalog/deregister``: a service, a check, or a whole node. What the agent owns on its own
        node stays (its serfHealth check, the ``consul`` service, its local registrations), as Consul's
        anti-entropy and serf would restore it within moments."""
        key = node_name.lower()
        if service_id:
            services = [] if self._agent_owns_service((key, service_id)) else [(key, service_id)]
            self._apply(Write(drop_services=services))
        elif check_id:
            self._apply(Write(drop_checks=[] if self._agent_owns_check((key, check_id)) else [(key, check_id)]))
        elif key != self._home:
            self._apply(Write(drop_nodes=[key]))
        else:
            services = [k for k in self._services if k[0] == key and not self._agent_owns_service(k)]
            checks = [k for k in self._checks if k[0] == key and not self._agent_owns_check(k)]
            self._apply(Write(drop_services=services, drop_checks=checks))

    def _agent_owns_service(self, key: tuple[str, str]) -> bool:
        service = self._services.get(key)
        return key[0] == self._home and service is not None and (service.local or service.id == "consul")

    def _agent_owns_check(self, key: tuple[str, str]) -> bool:
        check = self._checks.get(key)
        return key[0] == self._home and check is not None and (check.local or check.id == SERF_CHECK_ID)

    # ------------------------------------------------------------------------------------------ timers

    def next_ttl_deadline(self) -> float | None:
        return self._timers.next_ttl_deadline()

    def expire_ttls(self) -> list[str]:
        """Turn critical every TTL check whose deadline passed; its timer stays off until the next update."""
        expired = self._timers.due_ttls()
        for check_id in expired:
            self._timers.disarm_ttl(check_id)
            check = self.find_agent_check(check_id)
            if check is None:
                continue
            self._record(check, CRITICAL, self._timers.expiry_output(check_id))
        return expired

    def services_to_reap(self, min_deregister_after_s: float) -> list[str]:
        """Local services with a check critical for longer than its DeregisterCriticalServiceAfter, which
        is raised to `min_deregister_after_s` as Consul raises it to one minute."""
        return self._timers.services_to_reap(self.agent_checks(), min_deregister_after_s)

    def critical_for(self, check_id: str) -> float | None:
        return self._timers.critical_for(check_id)

    # ------------------------------------------------------------------------------------------ persistence

    def restore(self, data: dict[str, Any]) -> None:
        """Load a snapshot. Runtime timers restart now: TTLs run a full period and critical checks count
        their critical time from the restart, so nothing is reaped for the time the agent was down."""
        if not data:
            return
        self._load(data)
        self._timers.clear()
        if self._home not in self._nodes:  # restarted under another node name
            self._bootstrap()
        for check in self.agent_checks():
            self._timers.arm_ttl(check)
            self._timers.track_critical(check)
        self._definitions_version += 1
