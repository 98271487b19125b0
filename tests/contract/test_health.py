"""``/v1/health``: what service discovery reads. Instances with their node's and their own checks,
``?passing``, tags, filters, blocking queries that wake on a change or time out with the same index,
indexes that never go back, and the checks-by-service, -state and -node listings."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import consul
import pytest
import requests

from tests.contract.conftest import Agent


@pytest.fixture
def web(agent: Agent, unique: Callable[[str], str]) -> Iterator[str]:
    """A service with three instances: passing (tags primary, v1), warning (v1), critical (v2)."""
    c = agent.client()
    name = unique("web")
    for suffix, tags, verb in (("a", ["primary", "v1"], "pass"), ("b", ["v1"], "warn"), ("c", ["V2"], "fail")):
        c.agent.service.register(
            name,
            service_id=f"{name}-{suffix}",
            port=8000,
            tags=tags,
            meta={"zone": suffix},
            check=consul.Check.ttl("60s"),
        )
        requests.put(f"{agent.url}/v1/agent/check/{verb}/service:{name}-{suffix}", timeout=5).raise_for_status()
    yield name
    for suffix in "abc":
        c.agent.service.deregister(f"{name}-{suffix}")


def ids(instances: list[dict[str, dict[str, str]]]) -> list[str]:
    return [instance["Service"]["ID"] for instance in instances]


def health_index(agent: Agent, name: str, **params: str) -> int:
    response = requests.get(f"{agent.url}/v1/health/service/{name}", params=params, timeout=30)
    response.raise_for_status()
    return int(response.headers["X-Consul-Index"])


# ------------------------------------------------------------------------------------------ instances


def test_instances_come_with_node_and_service_checks_in_id_order(agent: Agent, web: str) -> None:
    index, instances = agent.client().health.service(web)
    assert int(index) >= 1
    assert ids(instances) == [f"{web}-a", f"{web}-b", f"{web}-c"]
    first = instances[0]
    assert [check["CheckID"] for check in first["Checks"]] == ["serfHealth", f"service:{web}-a"]
    assert first["Checks"][0]["Output"] == "Agent alive and reachable"
    assert first["Service"]["Port"] == 8000
    assert first["Node"]["Node"] == agent.client().agent.self()["Config"]["NodeName"]


def test_passing_drops_warning_and_critical_instances(agent: Agent, web: str) -> None:
    _, instances = agent.client().health.service(web, passing=True)
    assert ids(instances) == [f"{web}-a"]


def test_every_tag_must_match_case_insensitively(agent: Agent, web: str) -> None:
    c = agent.client()
    assert ids(c.health.service(web, tag="v1")[1]) == [f"{web}-a", f"{web}-b"]
    assert ids(c.health.service(web, tag=["V1", "PRIMARY"])[1]) == [f"{web}-a"]
    assert ids(c.health.service(web, tag="v2")[1]) == [f"{web}-c"]
    assert c.health.service(web, tag="v3")[1] == []


def test_service_names_match_case_insensitively(agent: Agent, web: str) -> None:
    assert len(agent.client().health.service(web.upper())[1]) == 3


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('Service.Meta.zone == "b"', ["b"]),
        ('"primary" in Service.Tags', ["a"]),
        ('Checks.Status == "critical"', ["c"]),
        ('Service.ID matches "-[ab]$" and Node.Node != ""', ["a", "b"]),
    ],
)
def test_filter_selects_on_the_rendered_instance(agent: Agent, web: str, expression: str, expected: list[str]) -> None:
    _, instances = agent.client().health.service(web, filter_expr=expression)
    assert ids(instances) == [f"{web}-{suffix}" for suffix in expected]


def test_a_bad_filter_is_500(agent: Agent, web: str) -> None:
    response = requests.get(f"{agent.url}/v1/health/service/{web}", params={"filter": "Service.ID ==="}, timeout=5)
    assert response.status_code == 500
    assert "Failed to create boolean expression evaluator" in response.text


def test_an_unknown_service_is_an_empty_list_with_an_index(agent: Agent, unique: Callable[[str], str]) -> None:
    response = requests.get(f"{agent.url}/v1/health/service/{unique('nobody')}", timeout=5)
    assert response.status_code == 200
    assert response.json() == []
    assert int(response.headers["X-Consul-Index"]) >= 1
    assert response.headers["X-Consul-KnownLeader"] == "true"


def test_an_invalid_passing_value_is_400(agent: Agent, web: str) -> None:
    response = requests.get(f"{agent.url}/v1/health/service/{web}", params={"passing": "sometimes"}, timeout=5)
    assert (response.status_code, response.text) == (400, "Invalid value for ?passing")


# ------------------------------------------------------------------------------------------ blocking


def test_blocking_query_wakes_when_an_instance_changes(agent: Agent, web: str) -> None:
    c = agent.client()
    index = health_index(agent, web)
    heal = threading.Timer(0.5, lambda: c.agent.check.ttl_pass(f"service:{web}-b"))
    heal.start()
    try:
        new_index, instances = c.health.service(web, index=index, wait="20s", passing=True)
    finally:
        heal.join()
    assert int(new_index) > index
    assert ids(instances) == [f"{web}-a", f"{web}-b"]


def test_blocking_query_times_out_with_the_same_index(agent: Agent, web: str) -> None:
    index = health_index(agent, web)
    started = time.monotonic()
    assert health_index(agent, web, index=str(index), wait="1s") == index
    assert time.monotonic() - started >= 0.9, "the query should have waited for a change that never came"


def test_writes_to_other_services_do_not_wake_a_watcher(agent: Agent, web: str, unique: Callable[[str], str]) -> None:
    c = agent.client()
    index = health_index(agent, web)
    other = unique("other")
    noise = threading.Timer(0.2, lambda: c.agent.service.register(other))
    noise.start()
    try:
        assert health_index(agent, web, index=str(index), wait="1s") == index
    finally:
        noise.join()
        c.agent.service.deregister(other)


def test_unchanged_heartbeats_do_not_wake_a_watcher(agent: Agent, web: str) -> None:
    c = agent.client()
    index = health_index(agent, web)
    heartbeat = threading.Timer(0.2, lambda: c.agent.check.ttl_pass(f"service:{web}-a"))
    heartbeat.start()
    try:
        assert health_index(agent, web, index=str(index), wait="1s") == index
    finally:
        heartbeat.join()


def test_the_index_never_goes_backwards(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("churn")
    seen = [health_index(agent, name)]
    for n in range(3):
        c.agent.service.register(name, service_id=f"{name}-{n}")
        seen.append(health_index(agent, name))
    for n in range(3):
        c.agent.service.deregister(f"{name}-{n}")
        seen.append(health_index(agent, name))
    assert seen == sorted(seen)
    assert seen[-1] > seen[0]


# ------------------------------------------------------------------------------------------ check listings


def test_service_checks_list_only_the_services_own_checks(agent: Agent, web: str) -> None:
    index, checks = agent.client().health.checks(web)
    assert int(index) >= 1
    assert sorted(check["CheckID"] for check in checks) == [f"service:{web}-{s}" for s in "abc"]
    assert {check["Status"] for check in checks} == {"passing", "warning", "critical"}


def test_checks_by_state(agent: Agent, web: str) -> None:
    c = agent.client()
    _, critical = c.health.state("critical")
    assert f"service:{web}-c" in [check["CheckID"] for check in critical]
    assert all(check["Status"] == "critical" for check in critical)
    _, every = c.health.state("any")
    assert {"serfHealth", f"service:{web}-a", f"service:{web}-b"} <= {check["CheckID"] for check in every}


def test_node_checks_include_serf_health(agent: Agent, web: str) -> None:
    c = agent.client()
    node = c.agent.self()["Config"]["NodeName"]
    _, checks = c.health.node(node)
    serf = next(check for check in checks if check["CheckID"] == "serfHealth")
    assert (serf["Name"], serf["Status"], serf["ServiceTags"]) == ("Serf Health Status", "passing", [])
    assert f"service:{web}-a" in [check["CheckID"] for check in checks]


def test_missing_names_are_400(agent: Agent) -> None:
    for path, reason in (
        ("service/", "Missing service name"),
        ("checks/", "Missing service name"),
        ("state/", "Missing check state"),
        ("node/", "Missing node name"),
    ):
        response = requests.get(f"{agent.url}/v1/health/{path}", timeout=5)
        assert (response.status_code, response.text) == (400, reason)
