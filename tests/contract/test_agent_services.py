"""Registering services with the local agent, as py-consul (sync and asyncio) and raw HTTP clients do:
what ``/v1/agent/services`` shows, what re-registration keeps, hash-blocking reads, maintenance, the
local health summary, and Consul's refusals."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import consul
import consul.aio
import pytest
import requests

from tests.contract.conftest import Agent


def put(agent: Agent, path: str, body: object = None, **params: str) -> requests.Response:
    data = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
    return requests.put(f"{agent.url}{path}", data=data, params=params, timeout=10)


# ------------------------------------------------------------------------------------------ register


def test_bare_register_shows_consuls_exact_agent_service(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("bare")
    assert c.agent.service.register(name) is True
    assert c.agent.services()[name] == {
        "ID": name,
        "Service": name,
        "Tags": [],
        "Meta": {},
        "Port": 0,
        "Address": "",
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False,
        "Datacenter": "dc1",
    }
    assert c.agent.service.deregister(name) is True
    assert name not in c.agent.services()


async def test_asyncio_client_registers_and_deregisters(agent: Agent, unique: Callable[[str], str]) -> None:
    c = consul.aio.Consul(host=agent.host, port=agent.port)
    try:
        name = unique("aio")
        assert await c.agent.service.register(name, service_id=f"{name}-1", port=9000, tags=["x"]) is True
        services = await c.agent.services()
        assert services[f"{name}-1"]["Port"] == 9000
        _, instances = await c.health.service(name)
        assert [i["Service"]["ID"] for i in instances] == [f"{name}-1"]
        assert await c.agent.service.deregister(f"{name}-1") is True
        assert await c.agent.service.deregister(f"{name}-1") is False
    finally:
        await c.close()


def test_full_registration_round_trips(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("full")
    assert c.agent.service.register(
        name,
        service_id=f"{name}-1",
        address="10.1.2.3",
        port=8080,
        tags=["primary", "v1"],
        meta={"version": "1.2"},
        weights={"Passing": 10, "Warning": 2},
        enable_tag_override=True,
    )
    service = c.agent.services()[f"{name}-1"]
    assert service["Tags"] == ["primary", "v1"]
    assert service["Meta"] == {"version": "1.2"}
    assert service["Weights"] == {"Passing": 10, "Warning": 2}
    assert service["EnableTagOverride"] is True
    assert service["TaggedAddresses"] == {
        "lan_ipv4": {"Address": "10.1.2.3", "Port": 8080},
        "wan_ipv4": {"Address": "10.1.2.3", "Port": 8080},
    }
    c.agent.service.deregister(f"{name}-1")


def test_connect_native_is_kept(agent: Agent, unique: Callable[[str], str]) -> None:
    name = unique("native")
    assert put(agent, "/v1/agent/service/register", {"Name": name, "Port": 1, "Connect": {"Native": True}}).ok
    assert agent.client().agent.services()[name]["Connect"] == {"Native": True}
    _, [instance] = agent.client().health.service(name)
    assert instance["Service"]["Connect"] == {"Native": True}
    put(agent, f"/v1/agent/service/deregister/{name}")


def test_service_ids_may_hold_slashes_and_colons(agent: Agent, unique: Callable[[str], str]) -> None:
    name = unique("odd")
    service_id = f"{name}/127.0.0.1:3000"
    assert agent.client().agent.service.register(name, service_id=service_id)
    assert requests.get(f"{agent.url}/v1/agent/service/{service_id}", timeout=5).json()["ID"] == service_id
    assert agent.client().agent.service.deregister(service_id)


def test_filter_selects_agent_services(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("filtered")
    c.agent.service.register(name, service_id=f"{name}-a", tags=["canary"])
    c.agent.service.register(name, service_id=f"{name}-b", tags=["stable"])
    selected = c.agent.services(filter_expr=f'Service == "{name}" and "canary" in Tags')
    assert list(selected) == [f"{name}-a"]
    for suffix in ("a", "b"):
        c.agent.service.deregister(f"{name}-{suffix}")


# ------------------------------------------------------------------------------------------ checks of a service


def test_reregistration_keeps_a_passing_check_passing(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("rereg")
    c.agent.service.register(name, check=consul.Check.ttl("60s"))
    c.agent.check.ttl_pass(f"service:{name}", "warm")
    c.agent.service.register(name, tags=["v2"], check=consul.Check.ttl("60s"))
    check = c.agent.checks()[f"service:{name}"]
    assert (check["Status"], check["Output"], check["ServiceTags"]) == ("passing", "warm", ["v2"])
    c.agent.service.deregister(name)


def test_replace_existing_checks_drops_checks_missing_from_the_request(
    agent: Agent, unique: Callable[[str], str]
) -> None:
    name = unique("replace")
    both = {"Name": name, "Checks": [{"CheckID": f"{name}-a", "TTL": "60s"}, {"CheckID": f"{name}-b", "TTL": "60s"}]}
    one = {"Name": name, "Checks": [{"CheckID": f"{name}-a", "TTL": "60s"}]}
    assert put(agent, "/v1/agent/service/register", both).ok
    assert put(agent, "/v1/agent/service/register", one).ok
    assert {f"{name}-a", f"{name}-b"} <= set(agent.client().agent.checks())
    assert put(agent, "/v1/agent/service/register", one, **{"replace-existing-checks": "true"}).ok
    checks = agent.client().agent.checks()
    assert f"{name}-a" in checks
    assert f"{name}-b" not in checks
    put(agent, f"/v1/agent/service/deregister/{name}")


def test_deregistering_a_service_removes_its_checks(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("gone")
    c.agent.service.register(name, check=consul.Check.ttl("60s"))
    c.agent.service.deregister(name)
    assert f"service:{name}" not in c.agent.checks()


# ------------------------------------------------------------------------------------------ one service


def test_service_definition_carries_its_content_hash(agent: Agent, unique: Callable[[str], str]) -> None:
    name = unique("hashed")
    agent.client().agent.service.register(name, port=80)
    response = requests.get(f"{agent.url}/v1/agent/service/{name}", timeout=5)
    assert response.status_code == 200
    assert response.json()["ContentHash"] == response.headers["X-Consul-ContentHash"]
    assert len(response.headers["X-Consul-ContentHash"]) == 16
    agent.client().agent.service.deregister(name)


def test_hash_blocking_read_returns_when_the_service_changes(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("hashwait")
    c.agent.service.register(name, port=80)
    first = requests.get(f"{agent.url}/v1/agent/service/{name}", timeout=5).headers["X-Consul-ContentHash"]
    changer = threading.Timer(0.3, lambda: c.agent.service.register(name, port=81))
    changer.start()
    try:
        response = requests.get(
            f"{agent.url}/v1/agent/service/{name}", params={"hash": first, "wait": "20s"}, timeout=30
        )
    finally:
        changer.join()
    assert response.json()["Port"] == 81
    assert response.headers["X-Consul-ContentHash"] != first
    c.agent.service.deregister(name)


def test_hash_blocking_read_times_out_with_the_same_hash(agent: Agent, unique: Callable[[str], str]) -> None:
    name = unique("hashidle")
    agent.client().agent.service.register(name)
    first = requests.get(f"{agent.url}/v1/agent/service/{name}", timeout=5).headers["X-Consul-ContentHash"]
    started = time.monotonic()
    response = requests.get(f"{agent.url}/v1/agent/service/{name}", params={"hash": first, "wait": "1s"}, timeout=30)
    assert time.monotonic() - started >= 0.9, "the read should have waited for the change that never came"
    assert response.headers["X-Consul-ContentHash"] == first
    agent.client().agent.service.deregister(name)


def test_unknown_service_definition_is_404(agent: Agent, unique: Callable[[str], str]) -> None:
    response = requests.get(f"{agent.url}/v1/agent/service/{unique('nope')}", timeout=5)
    assert response.status_code == 404
    assert agent.client().agent.service_definition(unique("nope")) is None


# ------------------------------------------------------------------------------------------ maintenance, local health


def test_maintenance_adds_a_critical_check_that_fails_the_local_health(
    agent: Agent, unique: Callable[[str], str]
) -> None:
    c = agent.client()
    name = unique("maint")
    c.agent.service.register(name, check=consul.Check.ttl("60s"))
    c.agent.check.ttl_pass(f"service:{name}")
    health = requests.get(f"{agent.url}/v1/agent/health/service/id/{name}", timeout=5)
    assert (health.status_code, health.json()["AggregatedStatus"]) == (200, "passing")

    assert c.agent.service.maintenance(name, "true", "upgrading") is True
    check = c.agent.checks()[f"_service_maintenance:{name}"]
    assert (check["Status"], check["Notes"], check["Name"]) == ("critical", "upgrading", "Service Maintenance Mode")
    text = requests.get(f"{agent.url}/v1/agent/health/service/name/{name}", params={"format": "text"}, timeout=5)
    assert (text.status_code, text.text) == (503, "maintenance")
    _, passing = c.health.service(name, passing=True)
    assert passing == []

    assert c.agent.service.maintenance(name, "false") is True
    assert f"_service_maintenance:{name}" not in c.agent.checks()
    c.agent.service.deregister(name)


def test_local_health_codes_follow_the_worst_check(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    name = unique("localhealth")
    c.agent.service.register(name, check=consul.Check.ttl("60s"))
    url = f"{agent.url}/v1/agent/health/service/id/{name}"
    c.agent.check.ttl_warn(f"service:{name}")
    assert requests.get(url, timeout=5).status_code == 429
    c.agent.check.ttl_fail(f"service:{name}")
    assert requests.get(url, timeout=5).status_code == 503
    c.agent.service.deregister(name)
    assert requests.get(url, timeout=5).status_code == 404
    assert requests.get(f"{agent.url}/v1/agent/health/service/name/{name}", timeout=5).status_code == 404


# ------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"Name": ', "Request decode failed"),
        ('{"Name": "x", "Colour": "blue"}', 'Request decode failed: json: unknown field "Colour"'),
        ("", "Request decode failed: EOF"),
        ('{"Port": 80}', "Missing service name"),
        ('{"Name": "x", "Address": "0.0.0.0"}', "Invalid service address"),
        ('{"Name": "x", "Meta": {"consul-x": "1"}}', "Invalid Service Meta"),
        ('{"Name": "x", "Weights": {"Passing": 0, "Warning": 1}}', "Invalid Weights: Passing must be greater than 0"),
        ('{"Name": "x", "Check": {"HTTP": "http://127.0.0.1:1/"}}', "Invalid check: Interval must be > 0"),
    ],
)
def test_bad_registrations_are_400_with_consuls_reason(agent: Agent, body: str, reason: str) -> None:
    response = put(agent, "/v1/agent/service/register", body)
    assert response.status_code == 400
    assert response.text.startswith(reason)


def test_bad_duration_is_400_naming_the_value(agent: Agent, unique: Callable[[str], str]) -> None:
    response = put(agent, "/v1/agent/service/register", {"Name": unique("dur"), "Check": {"TTL": "10parsecs"}})
    assert response.status_code == 400
    assert response.text.startswith("Request decode failed")
    assert "10parsecs" in response.text
    if agent.kind == "meshlet":  # Consul's own text does not name the field; ours does
        assert "TTL" in response.text


def test_script_checks_are_refused_as_consul_refuses_remote_scripts(agent: Agent, unique: Callable[[str], str]) -> None:
    check = {"Args": ["/bin/true"], "Interval": "10s"}
    response = put(agent, "/v1/agent/service/register", {"Name": unique("script"), "Check": check})
    assert response.status_code == 500
    assert response.text.startswith("Scripts are disabled on this agent from remote calls")


def test_deregistering_an_unknown_service_is_404(agent: Agent, unique: Callable[[str], str]) -> None:
    service_id = unique("missing")
    response = put(agent, f"/v1/agent/service/deregister/{service_id}")
    assert response.status_code == 404
    assert response.text == (
        f'Unknown service ID "{service_id}". Ensure that the service ID is passed, not the service name.'
    )
    assert agent.client().agent.service.deregister(service_id) is False


def test_maintenance_needs_an_enable_flag_and_a_known_service(agent: Agent, unique: Callable[[str], str]) -> None:
    name = unique("maintbad")
    agent.client().agent.service.register(name)
    missing = put(agent, f"/v1/agent/service/maintenance/{name}")
    assert (missing.status_code, missing.text) == (400, "Missing value for enable")
    bad = put(agent, f"/v1/agent/service/maintenance/{name}", enable="maybe")
    assert (bad.status_code, bad.text) == (400, 'Invalid value for enable: "maybe"')
    assert put(agent, f"/v1/agent/service/maintenance/{unique('nope')}", enable="true").status_code == 404
    agent.client().agent.service.deregister(name)
