"""The catalog's rules as Consul's agent and state store have them: check IDs and defaults, what a
re-registration keeps, which writes move which index, TTL expiry, reaping and ``?passing``; all with a
fake clock, no sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from meshlet.devagent.api.agent import service_from_definition
from meshlet.devagent.api.common import ConsulError
from meshlet.devagent.api.health import only_passing
from meshlet.devagent.catalog import OUTPUT_SYNC_INTERVAL_S, Catalog, CatalogError
from meshlet.devagent.catalog_records import (
    CRITICAL,
    PASSING,
    WARNING,
    Check,
    CheckDefinition,
    Node,
    Service,
    check_service_node,
)
from meshlet.devagent.checks import Streak
from meshlet.devagent.raft import RaftIndex


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_catalog() -> tuple[Catalog, RaftIndex, Clock]:
    clock = Clock()
    index = RaftIndex()
    return (
        Catalog(index, node="node-1", node_id="5b1d1c55-0000-4000-8000-000000000001", datacenter="dc1", clock=clock),
        index,
        clock,
    )


def register(catalog: Catalog, definition: dict[str, Any], *, replace: bool = False) -> None:
    service, checks = service_from_definition(definition)
    catalog.register_service(service, checks, replace_existing_checks=replace)


def ttl(seconds: float, **more: Any) -> dict[str, Any]:
    return {"TTL": seconds, **more}


def status_of(catalog: Catalog, check_id: str) -> tuple[str, str]:
    check = catalog.find_agent_check(check_id)
    assert check is not None, f"{check_id} should exist"
    return check.status, check.output


# ------------------------------------------------------------------------------------------ dev-mode start


def test_catalog_starts_with_the_agent_node_its_serf_check_and_the_consul_service() -> None:
    catalog, index, _ = make_catalog()
    [node] = catalog.nodes()
    assert node.name == "node-1"
    [(_, consul)] = catalog.instances("consul")
    assert consul.port == 8300
    [serf] = catalog.node_checks("node-1")
    assert (serf.id, serf.status, serf.output) == ("serfHealth", PASSING, "Agent alive and reachable")
    assert catalog.agent_services() == []
    assert catalog.agent_checks() == []
    assert index.value >= 2


# ------------------------------------------------------------------------------------------ check IDs


def test_a_single_check_is_named_after_the_service() -> None:
    catalog, _, _ = make_catalog()
    register(catalog, {"Name": "web", "ID": "web-1", "Check": ttl(10)})
    [check] = catalog.agent_checks()
    assert check.id == "service:web-1"
    assert check.name == "Service 'web' check"
    assert check.status == CRITICAL
    assert (check.service_id, check.service_name) == ("web-1", "web")


def test_several_checks_are_numbered_from_one_in_order_check_first() -> None:
    catalog, _, _ = make_catalog()
    register(
        catalog,
        {
            "Name": "web",
            "Check": ttl(10, Notes="first"),
            "Checks": [ttl(10, Notes="second"), ttl(10, CheckID="mine", Name="named", Status=PASSING)],
        },
    )
    by_id = {check.id: check for check in catalog.agent_checks()}
    assert set(by_id) == {"service:web:1", "service:web:2", "mine"}
    assert by_id["service:web:1"].notes == "first"
    assert by_id["service:web:2"].notes == "second"
    assert (by_id["mine"].name, by_id["mine"].status) == ("named", PASSING)


def test_an_empty_check_object_is_ignored_but_an_empty_checks_entry_is_refused() -> None:
    catalog, _, _ = make_catalog()
    register(catalog, {"Name": "web", "Check": {}})
    assert catalog.agent_checks() == []
    with pytest.raises(ConsulError, match="TTL must be > 0 for TTL checks"):
        service_from_definition({"Name": "web", "Checks": [{}]})


@pytest.mark.parametrize(
    ("check", "problem"),
    [
        ({"HTTP": "http://x", "Interval": 0.0}, "Interval must be > 0"),
        ({"TTL": 1.0, "Interval": 1.0}, "Interval and TTL cannot both be specified"),
        ({"GRPC": "127.0.0.1:1"}, "Interval must be > 0"),
        ({"TTL": 1.0, "Status": "sunny"}, "Status for checks must 'passing', 'warning', 'critical'"),
    ],
)
def test_invalid_check_types_are_refused_with_consuls_text(check: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConsulError, match=problem) as refused:
        service_from_definition({"Name": "web", "Check": check})
    assert refused.value.status == 400


def test_ip_addresses_get_consuls_default_tagged_addresses() -> None:
    service, _ = service_from_definition({"Name": "web", "Address": "10.0.0.7", "Port": 80})
    assert service.tagged_addresses == {
        "lan_ipv4": {"Address": "10.0.0.7", "Port": 80},
        "wan_ipv4": {"Address": "10.0.0.7", "Port": 80},
    }
    v6, _ = service_from_definition({"Name": "web", "Address": "::1", "Port": 80})
    assert set(v6.tagged_addresses) == {"lan_ipv6", "wan_ipv6"}
    named, _ = service_from_definition({"Name": "web", "Address": "web.local"})
    assert named.tagged_addresses == {}


# ------------------------------------------------------------------------------------------ re-registration


def test_reregistering_keeps_the_status_and_output_of_existing_checks() -> None:
    catalog, _, _ = make_catalog()
    register(catalog, {"Name": "web", "Check": ttl(30)})
    catalog.update_ttl("service:web", PASSING, "all good")
    register(catalog, {"Name": "web", "Tags": ["v2"], "Check": ttl(30)})
    assert status_of(catalog, "service:web") == (PASSING, "all good")
    [check] = catalog.agent_checks()
    assert check.service_tags == ["v2"]


def test_reregistering_keeps_other_checks_unless_asked_to_replace_them() -> None:
    catalog, _, _ = make_catalog()
    register(catalog, {"Name": "web", "Checks": [ttl(30, CheckID="a"), ttl(30, CheckID="b")]})
    register(catalog, {"Name": "web", "Checks": [ttl(30, CheckID="a")]})
    assert {c.id for c in catalog.agent_checks()} == {"a", "b"}
    register(catalog, {"Name": "web", "Checks": [ttl(30, CheckID="a")]}, replace=True)
    assert {c.id for c in catalog.agent_checks()} == {"a"}


def test_deregistering_a_service_removes_its_checks() -> None:
    catalog, _, _ = make_catalog()
    register(catalog, {"Name": "web", "Check": ttl(30)})
    assert catalog.deregister_service("web")
    assert catalog.agent_checks() == []
    assert not catalog.deregister_service("web")


# ------------------------------------------------------------------------------------------ indexes


def test_a_service_index_moves_with_its_own_instances_and_checks_only() -> None:
    catalog, index, _ = make_catalog()
    register(catalog, {"Name": "web", "Check": ttl(30)})
    web_index = catalog.service_index("web")
    assert web_index == index.value
    register(catalog, {"Name": "api", "Check": ttl(30)})
    catalog.update_ttl("service:api", PASSING, "")
    assert catalog.service_index("web") == web_index
    catalog.update_ttl("service:web", PASSING, "")
    assert catalog.service_index("web") == index.value > web_index
    assert catalog.service_index("WEB") == catalog.service_index("web")


def test_a_node_check_moves_every_service_on_the_node() -> None:
    catalog, index, _ = make_catalog()
    register(catalog, {"Name": "web"})
    catalog.set_node_maintenance(True, "")
    assert catalog.service_index("web") == index.value
    assert catalog.service_index("consul") == index.value


def test_writes_that_change_nothing_take_no_index() -> None:
    catalog, index, _ = make_catalog()
    register(catalog, {"Name": "web", "Check": ttl(30)})
    catalog.update_ttl("service:web", PASSING, "fine")
    before = index.value
    register(catalog, {"Name": "web", "Check": ttl(30)})
    catalog.update_ttl("service:web", PASSING, "fine")
    assert catalog.record_result("service:web", PASSING, "fine")
    assert index.value == before


def test_an_output_only_change_is_shown_at_once_but_published_after_the_sync_interval() -> None:
    """Consul's check_update_interval: chatty outputs must not wake every watcher on every run."""
    catalog, index, clock = make_catalog()
    register(catalog, {"Name": "web", "Check": {"HTTP": "http://x", "Interval": 1.0}})
    catalog.record_result("service:web", PASSING, "body 1")
    published = index.value
    clock.advance(1)
    catalog.record_result("service:web", PASSING, "body 2")
    assert status_of(catalog, "service:web") == (PASSING, "body 2")
    assert index.value == published
    clock.advance(OUTPUT_SYNC_INTERVAL_S)
    catalog.record_result("service:web", PASSING, "body 3")
    assert index.value > published


def test_an_unknown_service_reads_at_the_last_extinction_so_other_writes_do_not_wake_it() -> None:
    catalog, index, _ = make_catalog()
    register(catalog, {"Name": "web"})
    catalog.deregister_service("web")
    extinct_at = index.value
    assert catalog.service_index("web") == extinct_at
    register(catalog, {"Name": "api"})
    assert catalog.service_index("never-registered") == extinct_at
    register(catalog, {"Name": "web"})
    assert catalog.service_index("web") == index.value > extinct_at


def test_table_indexes_follow_their_tables() -> None:
    catalog, index, _ = make_catalog()
    nodes_before = catalog.table_index("nodes")
    register(catalog, {"Name": "web", "Check": ttl(30)})
    assert catalog.table_index("services") == catalog.table_index("checks") == index.value
    assert catalog.table_index("nodes") == nodes_before


# ------------------------------------------------------------------------------------------ TTL


def test_a_ttl_check_expires_a_ttl_after_registration_even_if_never_updated() -> None:
    catalog, _, clock = make_catalog()
    register(catalog, {"Name": "web", "Check": ttl(10, Status=PASSING)})
    assert catalog.next_ttl_deadline() == clock.now + 10
    clock.advance(9.9)
    assert catalog.expire_ttls() == []
    clock.advance(0.2)
    assert catalog.expire_ttls() == ["service:web"]
    assert status_of(catalog, "service:web") == (CRITICAL, "TTL expired")
    assert catalog.next_ttl_deadline() is None, "the timer waits for the next update"


def test_an_update_resets_the_ttl_and_expiry_quotes_the_last_output() -> None:
    catalog, _, clock = make_catalog()
    register(catalog, {"Name": "web", "Check": ttl(10)})
    clock.advance(8)
    catalog.update_ttl("service:web", WARNING, "slow disk")
    clock.advance(8)
    assert catalog.expire_ttls() == []
    clock.advance(3)
    catalog.expire_ttls()
    assert status_of(catalog, "service:web") == (
        CRITICAL,
        "TTL expired (last output before timeout follows): slow disk",
    )


def test_long_outputs_are_truncated_with_consuls_note() -> None:
    catalog, _, _ = make_catalog()
    register(catalog, {"Name": "web", "Check": ttl(10, OutputMaxSize=5)})
    catalog.update_ttl("service:web", PASSING, "abcdefgh")
    assert status_of(catalog, "service:web")[1] == "abcde ... (captured 5 of 8 bytes)"


# ------------------------------------------------------------------------------------------ reaping


def reapable(catalog: Catalog, after_s: float, status: str = CRITICAL) -> None:
    register(catalog, {"Name": "web", "Check": ttl(600, DeregisterCriticalServiceAfter=after_s, Status=status)})


def test_a_service_critical_longer_than_its_deregister_after_is_reaped() -> None:
    catalog, _, clock = make_catalog()
    reapable(catalog, 60)
    clock.advance(59)
    assert catalog.services_to_reap(0) == []
    clock.advance(2)
    assert catalog.services_to_reap(0) == ["web"]


def test_deregister_after_is_raised_to_the_minimum() -> None:
    catalog, _, clock = make_catalog()
    reapable(catalog, 1)
    clock.advance(30)
    assert catalog.services_to_reap(60) == []
    clock.advance(31)
    assert catalog.services_to_reap(60) == ["web"]


def test_critical_time_restarts_when_a_check_recovers() -> None:
    catalog, _, clock = make_catalog()
    reapable(catalog, 60)
    clock.advance(50)
    catalog.update_ttl("service:web", PASSING, "")
    clock.advance(50)
    catalog.update_ttl("service:web", CRITICAL, "")
    clock.advance(30)
    assert catalog.services_to_reap(0) == []
    assert catalog.critical_for("service:web") == 30


def test_passing_services_and_checks_without_deregister_after_are_never_reaped() -> None:
    catalog, _, clock = make_catalog()
    reapable(catalog, 60, status=PASSING)
    register(catalog, {"Name": "api", "Check": ttl(600)})
    clock.advance(3600)
    assert catalog.services_to_reap(0) == []


# ------------------------------------------------------------------------------------------ ?passing


def entry(*statuses: str) -> dict[str, Any]:
    node = Node(name="n")
    checks = [Check(id=f"c{i}", name="c", status=status) for i, status in enumerate(statuses)]
    return check_service_node(node, Service(id="s", name="s"), checks)


def test_passing_drops_instances_with_any_warning_or_critical_check() -> None:
    healthy, warning, critical, bare = entry(PASSING, PASSING), entry(PASSING, WARNING), entry(CRITICAL), entry()
    assert only_passing([healthy, warning, critical, bare]) == [healthy, bare]


# ------------------------------------------------------------------------------------------ catalog writes


def test_external_registrations_are_not_the_agents_and_removing_a_node_removes_its_services() -> None:
    catalog, index, _ = make_catalog()
    node = Node(name="ext", address="10.0.0.9")
    service = Service(id="db-1", name="db", port=5432)
    check = Check(id="db-up", name="db up", status=PASSING, service_id="db-1")
    catalog.catalog_register(node, "ext", service, [check])
    [(found_node, found)] = catalog.instances("db")
    assert (found_node.name, found.port, found.local) == ("ext", 5432, False)
    assert catalog.agent_services() == []
    assert [c.service_name for c in catalog.service_checks("db")] == ["db"]
    catalog.catalog_deregister("ext")
    assert catalog.instances("db") == []
    assert catalog.service_index("db") == index.value


def test_a_catalog_check_for_a_missing_service_is_refused() -> None:
    catalog, _, _ = make_catalog()
    with pytest.raises(CatalogError, match="Missing service registration"):
        catalog.catalog_register(
            Node(name="ext", address="10.0.0.9"), "ext", None, [Check("c", "c", PASSING, service_id="x")]
        )


def test_deregistering_the_agent_node_keeps_what_the_agent_owns() -> None:
    catalog, _, _ = make_catalog()
    register(catalog, {"Name": "web"})
    catalog.catalog_register(None, "node-1", Service(id="stray", name="stray"), [])
    catalog.catalog_deregister("node-1")
    catalog.catalog_deregister("node-1", check_id="serfHealth")
    catalog.catalog_deregister("node-1", service_id="web")
    assert [s.id for s in catalog.node_services("node-1")] == ["consul", "web"]
    assert [c.id for c in catalog.node_checks("node-1")] == ["serfHealth"]
    assert [s.id for s in catalog.agent_services()] == ["web"]


# ------------------------------------------------------------------------------------------ persistence


def test_a_snapshot_restores_records_indexes_and_restarts_ttl_timers() -> None:
    catalog, index, clock = make_catalog()
    register(catalog, {"Name": "web", "Tags": ["a"], "Check": ttl(10)})
    catalog.update_ttl("service:web", PASSING, "ok")
    snapshot = catalog.snapshot()

    restored, _, new_clock = make_catalog()
    new_clock.now = clock.now + 500
    restored.restore(snapshot)
    assert restored.agent_services() == catalog.agent_services()
    assert restored.agent_checks() == catalog.agent_checks()
    assert restored.service_index("web") == catalog.service_index("web") == index.value
    assert restored.next_ttl_deadline() == new_clock.now + 10


# ------------------------------------------------------------------------------------------ result streaks


def test_failure_thresholds_hold_the_previous_status_until_reached() -> None:
    streak = Streak(CheckDefinition(failures_before_warning=1, failures_before_critical=3, success_before_passing=2))
    assert [streak.record(s) for s in (CRITICAL, CRITICAL, CRITICAL)] == [WARNING, WARNING, CRITICAL]
    assert [streak.record(s) for s in (PASSING, PASSING)] == [None, PASSING]


def test_without_thresholds_every_result_is_reported() -> None:
    streak = Streak(CheckDefinition())
    assert [streak.record(s) for s in (PASSING, CRITICAL, WARNING)] == [PASSING, CRITICAL, WARNING]
