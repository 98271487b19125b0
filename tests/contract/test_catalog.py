"""``/v1/catalog``: the dev-mode catalog (the agent's node and the ``consul`` service), external
registrations through ``/v1/catalog/register`` and ``/deregister``, and the catalog reads."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.contract.conftest import Agent


@pytest.fixture
def external(agent: Agent, unique: Callable[[str], str]) -> Iterator[tuple[str, str]]:
    """An external node with a ``db`` service and a passing check, registered through the catalog."""
    node, service = unique("ext-node"), unique("db")
    body = {
        "Node": node,
        "Address": "10.9.8.7",
        "NodeMeta": {"rack": "r1"},  # in the body: py-consul sends node_meta as a query filter, which is ignored
        "Service": {"Service": service, "ID": f"{service}-1", "Port": 5432, "Tags": ["primary"]},
        "Check": {"Name": "db alive", "CheckID": f"{service}-alive", "Status": "passing", "ServiceID": f"{service}-1"},
    }
    response = requests.put(f"{agent.url}/v1/catalog/register", data=json.dumps(body), timeout=5)
    assert (response.status_code, response.json()) == (200, True)
    yield node, service
    agent.client().catalog.deregister(node)


def test_dev_catalog_has_the_agent_node_and_the_consul_service(agent: Agent) -> None:
    c = agent.client()
    node_name = c.agent.self()["Config"]["NodeName"]
    _, services = c.catalog.services()
    assert services["consul"] == []
    _, [consul_instance] = c.catalog.service("consul")
    assert (consul_instance["Node"], consul_instance["ServicePort"]) == (node_name, 8300)
    _, nodes = c.catalog.nodes()
    assert node_name in [node["Node"] for node in nodes]
    assert c.catalog.datacenters() == ["dc1"]


def test_external_service_is_visible_to_catalog_and_health(agent: Agent, external: tuple[str, str]) -> None:
    c = agent.client()
    node, service = external
    index, [instance] = c.catalog.service(service)
    assert int(index) >= 1
    assert (instance["Node"], instance["Address"], instance["ServicePort"]) == (node, "10.9.8.7", 5432)
    assert (instance["ServiceID"], instance["ServiceTags"], instance["NodeMeta"]) == (
        f"{service}-1",
        ["primary"],
        {"rack": "r1"},
    )
    _, [healthy] = c.health.service(service, passing=True)
    assert [check["CheckID"] for check in healthy["Checks"]] == [f"{service}-alive"]
    assert c.catalog.services()[1][service] == ["primary"]
    assert service not in {s["Service"] for s in c.agent.services().values()}, "catalog entries are not the agent's"


def test_catalog_service_filters_by_tag_and_node_meta(agent: Agent, external: tuple[str, str]) -> None:
    c = agent.client()
    _, service = external
    assert len(c.catalog.service(service, tag="PRIMARY")[1]) == 1
    assert c.catalog.service(service, tag="replica")[1] == []
    filtered = requests.get(f"{agent.url}/v1/catalog/service/{service}", params={"node-meta": "rack:r2"}, timeout=5)
    assert filtered.json() == []


def test_node_detail_lists_its_services(agent: Agent, external: tuple[str, str]) -> None:
    node, service = external
    _, detail = agent.client().catalog.node(node)
    assert detail["Node"]["Node"] == node
    assert detail["Node"]["Meta"] == {"rack": "r1"}
    assert detail["Services"][f"{service}-1"]["Port"] == 5432


def test_unknown_node_is_null_with_200(agent: Agent, unique: Callable[[str], str]) -> None:
    response = requests.get(f"{agent.url}/v1/catalog/node/{unique('nowhere')}", timeout=5)
    assert (response.status_code, response.json()) == (200, None)
    assert int(response.headers["X-Consul-Index"]) >= 1


def test_deregistering_a_service_then_the_node(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    node, service = unique("short-lived"), unique("cache")
    c.catalog.register(node, "10.0.0.2", service={"Service": service})
    assert c.catalog.deregister(node, service_id=service) is True
    assert c.catalog.service(service)[1] == []
    assert c.catalog.node(node)[1]["Services"] == {}
    assert c.catalog.deregister(node) is True
    assert c.catalog.node(node)[1] is None


def test_catalog_indexes_rise_with_registrations(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    before, _ = c.catalog.services()
    node = unique("rising")
    c.catalog.register(node, "10.0.0.3", service={"Service": unique("svc")})
    after, _ = c.catalog.services()
    assert int(after) > int(before)
    c.catalog.deregister(node)


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"Address": "10.0.0.1"}, 500, "Must provide node"),
        ({"Node": "n"}, 500, "Must provide address if SkipNodeUpdate is not set"),
        ({"Node": "n", "Address": "10.0.0.1", "Datacenter": "mars"}, 500, "No path to datacenter"),
        (
            {"Node": "n", "Address": "10.0.0.1", "Planet": "mars"},
            400,
            'Request decode failed: json: unknown field "Planet"',
        ),
    ],
)
def test_bad_catalog_registrations_get_consuls_answer(
    agent: Agent, body: dict[str, str], status: int, reason: str
) -> None:
    response = requests.put(f"{agent.url}/v1/catalog/register", data=json.dumps(body), timeout=5)
    assert response.status_code == status
    assert response.text.startswith(reason)
