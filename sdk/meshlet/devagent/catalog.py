"""The catalog: nodes, service instances and health checks, with the indexes Consul's state store keeps.

Pure state behind ``/v1/agent``, ``/v1/health`` and ``/v1/catalog``. A write that changes something takes
one Raft index and stamps it on what changed, on the tables it touched (nodes, services, checks) and on
every service name whose health answer changed; a write that changes nothing takes no index, so idle
blocking watchers stay asleep. The agent's own registrations are *local* (listed by ``/v1/agent/*`` and
run by the check runner); ``/v1/catalog/register`` entries are not.

Time comes from the injected clock only: TTL deadlines, how long a check has been critical (for reaping),
and when a check's changed output was last published (Consul's ``check_update_interval``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from meshlet.devagent.catalog_records import CONSUL_VERSION, CRITICAL, PASSING, Check, Node, Service, check_from_json
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

R = TypeVar("R", Node, Service, Check)


class CatalogError(ValueError):
    """A catalog write Consul's state store refuses (``/v1/catalog/register`` answers it as a 500)."""


@dataclass
class _Write:
    """What one write puts and removes; `Catalog._apply` turns it into at most one index."""

    nodes: list[Node] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    drop_nodes: list[str] = field(default_factory=list)
    drop_services: list[tuple[str, str]] = field(default_factory=list)
    drop_checks: list[tuple[str, str]] = field(default_factory=list)


def _same(old: R | None, new: R) -> bool:
    return old is not None and replace(old, create_index=0, modify_index=0) == replace(
        new, create_index=0, modify_index=0
    )


def truncate_output(output: str, limit: int) -> str:
    """Consul keeps at most `limit` bytes of a check's output and says how much it dropped."""
    limit = limit or DEFAULT_OUTPUT_MAX_SIZE
    raw = output.encode()
    if len(raw) <= limit:
        return output
    kept = raw[:limit].decode(errors="ignore")
    return f"{kept} ... (captured {limit} of {len(raw)} bytes)"


class Catalog:
    """Nodes, services and checks of one datacenter, starting as ``consul agent -dev`` does: the agent's
    node with a passing ``serfHealth`` check and the ``consul`` service."""

    def __init__(
        self, index: RaftIndex, *, node: str, node_id: str, datacenter: str, clock: Callable[[], float]
    ) -> None:
        self._index = index
        self.node = node
        self.node_id = node_id
        self.datacenter = datacenter
        self.clock = clock
        self._nodes: dict[str, Node] = {}
        self._services: dict[tuple[str, str], Service] = {}
        self._checks: dict[tuple[str, str], Check] = {}
        self._name_counts: dict[str, int] = {}
        self._service_indexes: dict[str, int] = {}
        self._tables = {"nodes": 0, "services": 0, "checks": 0}
        self._extinction_index = 0
        # Local checks' runtime, keyed by check ID: not persisted, restarted by `restore`.
        self._ttl_deadlines: dict[str, float] = {}
        self._ttl_last_output: dict[str, str] = {}
        self._critical_since: dict[str, float] = {}
        self._output_pending_since: dict[str, float] = {}
        self._definitions_version = 0
        self._bootstrap()

    @property
    def _home(self) -> str:
        return self.node.lower()

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
        self._apply(_Write(nodes=[node], services=[consul], checks=[serf]))

    # ------------------------------------------------------------------------------------------ reads

    def nodes(self) -> list[Node]:
        return sorted(self._nodes.values(), key=lambda node: node.name.lower())

    def get_node(self, name: str) -> Node | None:
        return self._nodes.get(name.lower())

    def node_services(self, name: str) -> list[Service]:
        key = name.lower()
        return sorted((s for (n, _), s in self._services.items() if n == key), key=lambda s: s.id)

    def instances(self, name: str) -> list[tuple[Node, Service]]:
        """Every instance of service `name` (case-insensitive) with its node, by node name then service ID."""
        wanted = name.lower()
        found = [
            (self._nodes[node_key], service)
            for (node_key, _), service in self._services.items()
            if service.name.lower() == wanted
        ]
        return sorted(found, key=lambda pair: (pair[0].name.lower(), pair[1].id))

    def service_tags(self) -> dict[str, list[str]]:
        """``/v1/catalog/services``: each service name with the union of its instances' tags."""
        tags: dict[str, set[str]] = {}
        names: dict[str, str] = {}
        for service in self._services.values():
            names.setdefault(service.name.lower(), service.name)
            tags.setdefault(service.name.lower(), set()).update(service.tags)
        return {names[key]: sorted(tags[key]) for key in sorted(names, key=lambda k: names[k])}

    def instance_checks(self, node: str, service_id: str) -> list[Check]:
        """What ``/v1/health/service`` lists for one instance: its node's checks and its own, by check ID."""
        key = node.lower()
        return sorted(
            (c for (n, _), c in self._checks.items() if n == key and c.service_id in ("", service_id)),
            key=lambda c: c.id,
        )

    def node_checks(self, node: str) -> list[Check]:
        key = node.lower()
        return sorted((c for (n, _), c in self._checks.items() if n == key), key=lambda c: c.id)

    def service_checks(self, name: str) -> list[Check]:
        """The checks of every instance of service `name` (no node checks), by node then check ID."""
        wanted = name.lower()
        return sorted(
            (c for c in self._checks.values() if c.service_id and c.service_name.lower() == wanted),
            key=lambda c: (c.node.lower(), c.id),
        )

    def checks_in_state(self, state: str) -> list[Check]:
        """``/v1/health/state/<state>``; ``any`` lists every check, serfHealth included."""
        return sorted(
            (c for c in self._checks.values() if state == "any" or c.status == state),
            key=lambda c: (c.node.lower(), c.id),
        )

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

    # ------------------------------------------------------------------------------------------ indexes

    def service_index(self, name: str) -> int:
        """The index of a health or catalog read of one service: the last change to its instances or their
        checks; for a service that does not exist, the last time any service disappeared (so unrelated
        writes do not wake its watchers), else the catalog's."""
        key = name.lower()
        if self._name_counts.get(key):
            return self._service_indexes[key]
        return self._extinction_index or self.table_index("nodes", "services")

    def table_index(self, *tables: str) -> int:
        return max(self._tables[table] for table in tables)

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
        write = _Write(services=[service], checks=fresh)
        for old in self.agent_checks():
            if old.service_id == service.id and old.id not in new_ids:
                if replace_existing_checks:
                    write.drop_checks.append((self._home, old.id))
                else:
                    write.checks.append(replace(old, service_name=service.name, service_tags=service.tags))
        self._apply(write)
        for check in fresh:
            self._arm_ttl(check)

    def register_check(self, check: Check) -> None:
        """Register a local check, node-level or of a local service (the caller checked it exists)."""
        service = self.find_agent_service(check.service_id) if check.service_id else None
        check = self._local_check(check, service)
        self._apply(_Write(checks=[check]))
        self._arm_ttl(check)

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
        self._apply(_Write(drop_services=[(self._home, service_id)]))
        return True

    def deregister_check(self, check_id: str) -> bool:
        if self.find_agent_check(check_id) is None:
            return False
        self._apply(_Write(drop_checks=[(self._home, check_id)]))
        return True

    def update_ttl(self, check_id: str, status: str, output: str) -> None:
        """A pass/warn/fail/update on a local TTL check: set it and restart its TTL."""
        check = self.find_agent_check(check_id)
        assert check is not None, "the caller checks that the check exists"
        output = truncate_output(output, check.definition.output_max_size)
        self._record(check, status, output)
        self._ttl_last_output[check_id] = output
        self._ttl_deadlines[check_id] = self.clock() + check.definition.ttl_s

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
        now = self.clock()
        if check.status == status:
            pending_since = self._output_pending_since.setdefault(check.id, now)
            if now - pending_since < OUTPUT_SYNC_INTERVAL_S:
                self._checks[(self._home, check.id)] = replace(check, output=output)
                return
        self._output_pending_since.pop(check.id, None)
        self._apply(_Write(checks=[replace(check, status=status, output=output)]))

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
        write = _Write(nodes=[node] if node is not None else [])
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
            self._apply(_Write(drop_services=services))
        elif check_id:
            self._apply(_Write(drop_checks=[] if self._agent_owns_check((key, check_id)) else [(key, check_id)]))
        elif key != self._home:
            self._apply(_Write(drop_nodes=[key]))
        else:
            services = [k for k in self._services if k[0] == key and not self._agent_owns_service(k)]
            checks = [k for k in self._checks if k[0] == key and not self._agent_owns_check(k)]
            self._apply(_Write(drop_services=services, drop_checks=checks))

    def _agent_owns_service(self, key: tuple[str, str]) -> bool:
        service = self._services.get(key)
        return key[0] == self._home and service is not None and (service.local or service.id == "consul")

    def _agent_owns_check(self, key: tuple[str, str]) -> bool:
        check = self._checks.get(key)
        return key[0] == self._home and check is not None and (check.local or check.id == SERF_CHECK_ID)

    # ------------------------------------------------------------------------------------------ timers

    def next_ttl_deadline(self) -> float | None:
        return min(self._ttl_deadlines.values(), default=None)

    def expire_ttls(self) -> list[str]:
        """Turn critical every TTL check whose deadline passed; its timer stays off until the next update."""
        now = self.clock()
        expired = sorted(cid for cid, deadline in self._ttl_deadlines.items() if deadline <= now)
        for check_id in expired:
            del self._ttl_deadlines[check_id]
            check = self.find_agent_check(check_id)
            if check is None:
                continue
            last = self._ttl_last_output.get(check_id, "")
            output = f"TTL expired (last output before timeout follows): {last}" if last else "TTL expired"
            self._record(check, CRITICAL, output)
        return expired

    def services_to_reap(self, min_deregister_after_s: float) -> list[str]:
        """Local services with a check critical for longer than its DeregisterCriticalServiceAfter, which
        is raised to `min_deregister_after_s` as Consul raises it to one minute."""
        now = self.clock()
        doomed: set[str] = set()
        for check in self.agent_checks():
            after = check.definition.deregister_after_s
            since = self._critical_since.get(check.id)
            if not check.service_id or after <= 0 or check.status != CRITICAL or since is None:
                continue
            if now - since > max(after, min_deregister_after_s):
                doomed.add(check.service_id)
        return sorted(doomed)

    def critical_for(self, check_id: str) -> float | None:
        since = self._critical_since.get(check_id)
        return None if since is None else self.clock() - since

    def _arm_ttl(self, check: Check) -> None:
        """(Re)start a TTL check's timer: Consul starts it at registration, not at the first update."""
        self._ttl_last_output.pop(check.id, None)
        if check.definition.ttl_s > 0:
            self._ttl_deadlines[check.id] = self.clock() + check.definition.ttl_s
        else:
            self._ttl_deadlines.pop(check.id, None)

    # ------------------------------------------------------------------------------------------ applying

    def _apply(self, write: _Write) -> int:
        """Apply one write at the next index, or do nothing and return 0 when it changes nothing.

        The index is announced only after the state is whole, because announcing runs the check runner's
        `reconcile`, which reads the catalog."""
        index = self._index.value + 1
        tables: set[str] = set()
        touched: set[str] = set()  # service names whose answers change
        definitions_moved = False

        for node_key in write.drop_nodes:
            if self._nodes.pop(node_key, None) is not None:
                tables.add("nodes")
                write.drop_services += [k for k in self._services if k[0] == node_key]
                write.drop_checks += [k for k in self._checks if k[0] == node_key]
        for key in write.drop_services:
            dropped = self._services.pop(key, None)
            if dropped is not None:
                tables.add("services")
                touched.add(dropped.name.lower())
                self._count(dropped.name, -1)
                write.drop_checks += [k for k, c in self._checks.items() if k[0] == key[0] and c.service_id == key[1]]
        for key in write.drop_checks:
            check = self._checks.pop(key, None)
            if check is not None:
                tables.add("checks")
                touched |= self._names_affected_by(check)
                definitions_moved |= check.local
                self._forget_runtime(check)

        for node in write.nodes:
            old_node = self._nodes.get(node.name.lower())
            if not _same(old_node, node):
                self._nodes[node.name.lower()] = self._stamped(node, old_node, index)
                tables.add("nodes")
                touched |= {s.name.lower() for (n, _), s in self._services.items() if n == node.name.lower()}
        for service in write.services:
            key = (service.node.lower(), service.id)
            old_service = self._services.get(key)
            if not _same(old_service, service):
                self._services[key] = self._stamped(service, old_service, index)
                tables.add("services")
                touched.add(service.name.lower())
                if old_service is not None:
                    touched.add(old_service.name.lower())
                    self._count(old_service.name, -1)
                self._count(service.name, +1)
        for check in write.checks:
            key = (check.node.lower(), check.id)
            old_check = self._checks.get(key)
            if not _same(old_check, check):
                self._checks[key] = self._stamped(check, old_check, index)
                tables.add("checks")
                touched |= self._names_affected_by(check)
                definitions_moved |= check.local and (old_check is None or old_check.definition != check.definition)
                self._track_critical(check)

        if not tables:
            return 0
        for table in tables:
            self._tables[table] = index
        for name in touched:
            if self._name_counts.get(name):
                self._service_indexes[name] = index
            elif self._service_indexes.pop(name, None) is not None:
                self._extinction_index = index
        if definitions_moved:
            self._definitions_version += 1
        advanced = self._index.advance()
        assert advanced == index, "nothing else may write while the catalog applies a write"
        return index

    @staticmethod
    def _stamped(record: R, old: R | None, index: int) -> R:
        return replace(record, create_index=old.create_index if old is not None else index, modify_index=index)

    def _count(self, name: str, delta: int) -> None:
        key = name.lower()
        self._name_counts[key] = self._name_counts.get(key, 0) + delta
        if self._name_counts[key] <= 0:
            del self._name_counts[key]

    def _names_affected_by(self, check: Check) -> set[str]:
        """A service check moves its service; a node check moves every service on the node (Consul's rule)."""
        if check.service_id:
            return {check.service_name.lower()}
        node_key = check.node.lower()
        return {s.name.lower() for (n, _), s in self._services.items() if n == node_key}

    def _track_critical(self, check: Check) -> None:
        if not check.local:
            return
        if check.status == CRITICAL:
            self._critical_since.setdefault(check.id, self.clock())
        else:
            self._critical_since.pop(check.id, None)

    def _forget_runtime(self, check: Check) -> None:
        if check.local:
            for runtime in (
                self._ttl_deadlines,
                self._ttl_last_output,
                self._critical_since,
                self._output_pending_since,
            ):
                runtime.pop(check.id, None)

    # ------------------------------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        return {
            "tables": dict(self._tables),
            "service_indexes": dict(self._service_indexes),
            "extinction_index": self._extinction_index,
            "nodes": [asdict(node) for node in self._nodes.values()],
            "services": [asdict(service) for service in self._services.values()],
            "checks": [asdict(check) for check in self._checks.values()],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Load a snapshot. Runtime timers restart now: TTLs run a full period and critical checks count
        their critical time from the restart, so nothing is reaped for the time the agent was down."""
        if not data:
            return
        self._nodes = {node.name.lower(): node for node in (Node(**item) for item in data["nodes"])}
        self._services = {(s.node.lower(), s.id): s for s in (Service(**item) for item in data["services"])}
        self._checks = {(c.node.lower(), c.id): c for c in map(check_from_json, data["checks"])}
        self._tables = {**self._tables, **data["tables"]}
        self._service_indexes = {k: int(v) for k, v in data["service_indexes"].items()}
        self._extinction_index = int(data["extinction_index"])
        self._name_counts = {}
        for service in self._services.values():
            self._count(service.name, +1)
        for runtime in (self._ttl_deadlines, self._ttl_last_output, self._critical_since, self._output_pending_since):
            runtime.clear()
        if self._home not in self._nodes:  # restarted under another node name
            self._bootstrap()
        for check in self.agent_checks():
            self._arm_ttl(check)
            self._track_critical(check)
        self._definitions_version += 1
