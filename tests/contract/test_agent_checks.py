"""Checks registered with the local agent: registration on their own or for a service, TTL heartbeats
(pass, warn, fail, update), TTL expiry, ``/v1/agent/checks`` and Consul's refusals."""

from __future__ import annotations

import json
from collections.abc import Callable

import consul
import pytest
import requests

from tests.contract.conftest import Agent
from tests.support.processes import wait_until


def put(agent: Agent, path: str, body: object = None, **params: str) -> requests.Response:
    data = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
    return requests.put(f"{agent.url}{path}", data=data, params=params, timeout=10)


def check_of(agent: Agent, check_id: str) -> dict[str, object]:
    checks: dict[str, dict[str, object]] = agent.client().agent.checks()
    return checks[check_id]


# ------------------------------------------------------------------------------------------ registration


def test_a_fresh_agent_lists_no_serf_check(agent: Agent) -> None:
    assert "serfHealth" not in agent.client().agent.checks()


def test_check_registered_on_its_own_starts_critical_with_its_notes(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("disk")
    assert c.agent.check.register(name, check=consul.Check.ttl("60s"), notes="watches /var") is True
    check = check_of(agent, name)
    assert check["Status"] == "critical"
    assert check["Notes"] == "watches /var"
    assert check["Output"] == ""
    assert check["Type"] == "ttl"
    assert check["ServiceID"] == ""
    assert c.agent.check.deregister(name) is True


def test_check_registered_for_a_service_takes_its_name_and_tags(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("svc")
    c.agent.service.register(name, service_id=f"{name}-1", tags=["blue"])
    assert c.agent.check.register(
        "ready", check=consul.Check.ttl("60s"), check_id=f"{name}-ready", service_id=f"{name}-1"
    )
    check = check_of(agent, f"{name}-ready")
    assert (check["ServiceID"], check["ServiceName"], check["ServiceTags"]) == (f"{name}-1", name, ["blue"])
    c.agent.service.deregister(f"{name}-1")
    assert f"{name}-ready" not in c.agent.checks()


def test_check_for_an_unknown_service_is_404(agent: Agent, unique: Callable[[str], str]) -> None:
    service_id = unique("ghost")
    assert agent.client().agent.check.register("c", check=consul.Check.ttl("5s"), service_id=service_id) is False
    response = put(agent, "/v1/agent/check/register", {"Name": "c", "TTL": "5s", "ServiceID": service_id})
    assert (response.status_code, response.text) == (404, f'ServiceID "{service_id}" does not exist')


def test_explicit_status_is_the_initial_status(agent: Agent, unique: Callable[[str], str]) -> None:
    name = unique("warm")
    assert put(agent, "/v1/agent/check/register", {"Name": name, "TTL": "60s", "Status": "passing"}).ok
    assert check_of(agent, name)["Status"] == "passing"
    put(agent, f"/v1/agent/check/deregister/{name}")


def test_checks_of_a_multi_check_service_are_numbered(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("multi")
    c.agent.service.register(name, check=consul.Check.ttl("60s"), extra_checks=[consul.Check.ttl("60s")])
    assert {f"service:{name}:1", f"service:{name}:2"} <= set(c.agent.checks())
    c.agent.service.deregister(name)


def test_filter_selects_agent_checks(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("checkfilter")
    c.agent.service.register(name, check=consul.Check.ttl("60s"))
    selected = c.agent.checks(filter_expr=f'ServiceName == "{name}"')
    assert list(selected) == [f"service:{name}"]
    c.agent.service.deregister(name)


# ------------------------------------------------------------------------------------------ TTL heartbeats


def test_pass_warn_fail_set_the_status_and_the_note_becomes_the_output(
    agent: Agent, unique: Callable[[str], str]
) -> None:
    c = agent.client()
    name = unique("ttl")
    c.agent.service.register(name, check=consul.Check.ttl("60s"))
    check_id = f"service:{name}"
    assert c.agent.check.ttl_pass(check_id, "all good") is True
    assert (check_of(agent, check_id)["Status"], check_of(agent, check_id)["Output"]) == ("passing", "all good")
    assert c.agent.check.ttl_warn(check_id, "slow") is True
    assert check_of(agent, check_id)["Status"] == "warning"
    assert c.agent.check.ttl_fail(check_id) is True
    assert (check_of(agent, check_id)["Status"], check_of(agent, check_id)["Output"]) == ("critical", "")
    c.agent.service.deregister(name)


def test_update_sets_status_and_output(agent: Agent, unique: Callable[[str], str]) -> None:
    name = unique("upd")
    agent.client().agent.check.register(name, check=consul.Check.ttl("60s"))
    assert put(agent, f"/v1/agent/check/update/{name}", {"Status": "warning", "Output": "disk 91%"}).ok
    check = check_of(agent, name)
    assert (check["Status"], check["Output"]) == ("warning", "disk 91%")
    bad = put(agent, f"/v1/agent/check/update/{name}", {"Status": "sunny"})
    assert (bad.status_code, bad.text) == (400, "Invalid check status: 'sunny'")
    agent.client().agent.check.deregister(name)


def test_ttl_expires_to_critical_when_no_heartbeat_comes(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("expiring")
    c.agent.check.register(name, check=consul.Check.ttl("1s"))
    c.agent.check.ttl_pass(name, "beat")
    wait_until(lambda: check_of(agent, name)["Status"] == "critical", 10, "the TTL to expire")
    assert check_of(agent, name)["Output"] == "TTL expired (last output before timeout follows): beat"
    c.agent.check.deregister(name)


def test_a_never_updated_ttl_check_expires_too(agent: Agent, unique: Callable[[str], str]) -> None:
    name = unique("neverbeat")
    assert put(agent, "/v1/agent/check/register", {"Name": name, "TTL": "1s", "Status": "passing"}).ok
    wait_until(lambda: check_of(agent, name)["Output"] == "TTL expired", 10, "the TTL to expire")
    assert check_of(agent, name)["Status"] == "critical"
    put(agent, f"/v1/agent/check/deregister/{name}")


# ------------------------------------------------------------------------------------------ refusals


def test_pass_on_an_unknown_check_is_404(agent: Agent, unique: Callable[[str], str]) -> None:
    check_id = unique("nocheck")
    response = put(agent, f"/v1/agent/check/pass/{check_id}")
    assert response.status_code == 404
    assert response.text == f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.'
    assert agent.client().agent.check.ttl_pass(check_id) is False
    assert put(agent, f"/v1/agent/check/deregister/{check_id}").status_code == 404


def test_pass_on_a_check_without_ttl_is_500(agent: Agent, unique: Callable[[str], str]) -> None:
    name = unique("http")
    check = consul.Check.http("http://127.0.0.1:1/health", "30s")
    assert agent.client().agent.check.register(name, check=check)
    response = put(agent, f"/v1/agent/check/pass/{name}")
    assert (response.status_code, response.text) == (500, f'CheckID "{name}" does not have associated TTL')
    with pytest.raises(consul.ConsulException):
        agent.client().agent.check.ttl_pass(name)
    agent.client().agent.check.deregister(name)


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ('{"TTL": "10s"}', 400, "Missing check name"),
        ('{"Name": "x", "TTL": "10s", "Status": "sunny"}', 400, "Bad check status"),
        ('{"Name": "x"}', 400, "Invalid check: TTL must be > 0 for TTL checks"),
        ('{"Name": "x", "TTL": "soon"}', 400, "Request decode failed"),
        ('{"Name": "x", "TTL": "10s", "Extra": 1}', 400, 'Request decode failed: json: unknown field "Extra"'),
        ('{"Name": "x", "Args": ["true"], "Interval": "10s"}', 500, "Scripts are disabled on this agent"),
    ],
)
def test_bad_check_registrations_get_consuls_answer(agent: Agent, body: str, status: int, reason: str) -> None:
    response = put(agent, "/v1/agent/check/register", body)
    assert response.status_code == status
    assert response.text.startswith(reason)
