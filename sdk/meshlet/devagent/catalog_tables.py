"""The catalog's tables (nodes, service instances, health checks), the reads every endpoint shares and the
indexes Consul's state store keeps on them. `_apply` is the one way to change the tables: a write takes at most
one Raft index. Apart from catalog.py, which says what the agent's and ``/v1/catalog`` writes mean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from meshlet.devagent.catalog_records import Check, Node, Service, check_from_json
from meshlet.devagent.check_timers import CheckTimers
from meshlet.devagent.raft import RaftIndex

R = TypeVar("R", Node, Service, Check)


@dataclass
class Write:
    """What one write puts and removes; `CatalogTables._apply` turns it into at most one index."""

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


class CatalogTables:
    """The stored state of one datacenter's catalog; `timers` hears of every local check put or dropped."""

    def __init__(self, index: RaftIndex, *, node: str, timers: CheckTimers) -> None:
        self._index = index
        self.node = node
        self._timers = timers
        self._nodes: dict[str, Node] = {}
        self._services: dict[tuple[str, str], Service] = {}
        self._checks: dict[tuple[str, str], Check] = {}
        self._name_counts: dict[str, int] = {}
        self._service_indexes: dict[str, int] = {}
        self._tables = {"nodes": 0, "services": 0, "checks": 0}
        self._extinction_index = 0
        self._definitions_version = 0

    def __repr__(self) -> str:
        counts = f"nodes={len(self._nodes)}, services={len(self._services)}, checks={len(self._checks)}"
        return f"{type(self).__name__}(node={self.node!r}, {counts}, index={self._index.value})"

    @property
    def _home(self) -> str:
        return self.node.lower()

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

    # ------------------------------------------------------------------------------------------ applying

    def _apply(self, write: Write) -> int:
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
                self._timers.forget(check)

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
                self._timers.track_critical(check)

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

    def _load(self, data: dict[str, Any]) -> None:
        """Replace the tables with a snapshot's."""
        self._nodes = {node.name.lower(): node for node in (Node(**item) for item in data["nodes"])}
        self._services = {(s.node.lower(), s.id): s for s in (Service(**item) for item in data["services"])}
        self._checks = {(c.node.lower(), c.id): c for c in map(check_from_json, data["checks"])}
        self._tables = {**self._tables, **data["tables"]}
        self._service_indexes = {k: int(v) for k, v in data["service_indexes"].items()}
        self._extinction_index = int(data["extinction_index"])
        self._name_counts = {}
        for service in self._services.values():
            self._count(service.name, +1)
