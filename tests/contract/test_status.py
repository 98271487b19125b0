"""Who the agent says it is: leader and peers, agent self and members, and the root page with the UI off."""

from __future__ import annotations

import re
from collections.abc import Callable

import requests

from tests.contract.conftest import Agent

ADDRESS = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:]+\]):\d+$")


def test_leader_is_the_server_rpc_address_as_a_json_string(agent: Agent) -> None:
    leader = agent.client().status.leader()
    assert isinstance(leader, str)
    assert ADDRESS.match(leader), leader
    response = requests.get(f"{agent.url}/v1/status/leader", timeout=5)
    assert response.headers["Content-Type"].startswith("application/json")
    assert "X-Consul-Index" not in response.headers


def test_the_only_peer_is_the_leader(agent: Agent) -> None:
    c = agent.client()
    assert c.status.peers() == [c.status.leader()]


def test_status_for_an_unknown_datacenter_is_500_no_path(agent: Agent) -> None:
    response = requests.get(f"{agent.url}/v1/status/leader", params={"dc": "nowhere"}, timeout=5)
    assert response.status_code == 500
    assert "No path to datacenter" in response.text


def test_agent_self_describes_a_server_of_dc1(agent: Agent) -> None:
    self_ = agent.client().agent.self()
    config = self_["Config"]
    assert config["Datacenter"] == "dc1"
    assert config["PrimaryDatacenter"] == "dc1"
    assert config["Server"] is True
    assert re.match(r"^\d+\.\d+\.\d+", config["Version"])
    assert config["NodeName"]
    assert re.match(r"^[0-9a-f-]{36}$", config["NodeID"])
    assert {"Revision", "BuildDate"} <= set(config)
    assert {"Config", "DebugConfig", "Coord", "Member", "Stats", "Meta"} <= set(self_)


def test_agent_self_member_is_an_alive_consul_server(agent: Agent) -> None:
    self_ = agent.client().agent.self()
    member = self_["Member"]
    assert member["Name"] == self_["Config"]["NodeName"]
    assert member["Port"] == 8301
    assert member["Status"] == 1
    assert member["Tags"]["role"] == "consul"
    assert member["Tags"]["dc"] == "dc1"
    assert {"ProtocolMin", "ProtocolMax", "ProtocolCur", "DelegateMin", "DelegateMax", "DelegateCur"} <= set(member)


def test_agent_self_stats_agree_with_status_leader(agent: Agent) -> None:
    c = agent.client()
    stats = c.agent.self()["Stats"]
    assert stats["consul"]["leader_addr"] == c.status.leader()
    assert stats["consul"]["server"] == "true"
    assert stats["build"]["version"] == c.agent.self()["Config"]["Version"]
    assert {"checks", "services", "check_ttls"} <= set(stats["agent"])


def test_agent_self_is_agent_local_without_an_index(agent: Agent) -> None:
    response = requests.get(f"{agent.url}/v1/agent/self", timeout=5)
    assert response.status_code == 200
    assert "X-Consul-Index" not in response.headers


def test_members_lists_this_agent(agent: Agent) -> None:
    c = agent.client()
    name = c.agent.self()["Config"]["NodeName"]
    members = c.agent.members()
    assert name in [member["Name"] for member in members]


def test_wan_members_are_named_node_dot_datacenter(agent: Agent) -> None:
    c = agent.client()
    name = c.agent.self()["Config"]["NodeName"]
    assert f"{name}.dc1" in [member["Name"] for member in c.agent.members(wan=True)]


def test_root_page_says_the_ui_is_disabled(agent: Agent) -> None:
    response = requests.get(f"{agent.url}/", timeout=5)
    assert response.status_code == 200
    assert response.text.startswith("Consul Agent: UI disabled.")


def test_datacenter_and_node_flags_show_in_agent_self(dev_agent_factory: Callable[..., Agent]) -> None:
    """Dev agent only: ``consul agent -dev`` takes these as -datacenter and -node, which the shared fixture
    does not pass."""
    private = dev_agent_factory("--datacenter", "dc7", "--node", "edge-node")
    self_ = private.client().agent.self()
    assert self_["Config"]["Datacenter"] == "dc7"
    assert self_["Config"]["NodeName"] == "edge-node"
    assert self_["Member"]["Tags"]["dc"] == "dc7"
    assert private.client().agent.members()[0]["Name"] == "edge-node"
