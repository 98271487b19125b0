"""``meshlet dev-agent --data-dir``: what was written survives a restart, indexes never go back, and a
crash right after writes leaves a snapshot that loads.

Dev agent only: ``consul agent -dev`` keeps everything in memory, so these tests start private agents on
their own data directories.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import consul
import requests

from tests.contract.conftest import Agent, start_dev_agent
from tests.support.processes import Child, Processes, wait_until

SNAPSHOT = "state.json"


def start(procs: Processes, data_dir: Path) -> tuple[Agent, Child]:
    agent = start_dev_agent(procs, "--data-dir", str(data_dir))
    return agent, procs.children[-1]


def stop_gracefully(child: Child) -> None:
    child.signal(signal.SIGTERM)
    assert child.wait(15) == 0, child.output()


def kv_index(agent: Agent) -> int:
    response = requests.get(f"{agent.url}/v1/kv/", params={"keys": ""}, timeout=5)
    return int(response.headers["X-Consul-Index"])


def test_kv_entries_survive_a_restart_with_their_indexes(procs: Processes, tmp_path: Path) -> None:
    agent, child = start(procs, tmp_path / "data")
    c = agent.client()
    c.kv.put("app/config", b"\x00binary\xff", flags=11)
    c.kv.put("app/empty", None)
    c.kv.put("app/gone", "soon deleted")
    c.kv.delete("app/gone")
    _, before = c.kv.get("app/", recurse=True)
    index_before = kv_index(agent)
    stop_gracefully(child)

    agent, _ = start(procs, tmp_path / "data")
    c = agent.client()
    _, after = c.kv.get("app/", recurse=True)
    assert after == before
    assert kv_index(agent) >= index_before


def test_index_keeps_rising_after_a_restart(procs: Processes, tmp_path: Path) -> None:
    """A watcher that kept its index across our restart must never see it go backwards."""
    agent, child = start(procs, tmp_path / "data")
    c = agent.client()
    for n in range(5):
        c.kv.put(f"counter/{n}", str(n))
    _, last = c.kv.get("counter/4")
    stop_gracefully(child)

    agent, _ = start(procs, tmp_path / "data")
    c = agent.client()
    c.kv.put("counter/5", "5")
    _, newest = c.kv.get("counter/5")
    assert newest["CreateIndex"] > last["ModifyIndex"]


def test_agent_identity_survives_a_restart(procs: Processes, tmp_path: Path) -> None:
    agent, child = start(procs, tmp_path / "data")
    node_id = agent.client().agent.self()["Config"]["NodeID"]
    stop_gracefully(child)

    agent, _ = start(procs, tmp_path / "data")
    assert agent.client().agent.self()["Config"]["NodeID"] == node_id


def test_sigkill_during_writes_leaves_a_loadable_snapshot(procs: Processes, tmp_path: Path) -> None:
    """The snapshot is replaced atomically: after a crash it holds some prefix of the writes, never a torn
    file. Writes keep coming while the agent is killed, and large values make each snapshot write slow,
    so the kill often lands in the middle of one."""
    data_dir = tmp_path / "data"
    agent, child = start(procs, data_dir)
    value = "x" * 20_000
    written = 0

    def write_until_killed() -> None:
        nonlocal written
        with requests.Session() as http:
            for n in range(100_000):
                try:
                    http.put(f"{agent.url}/v1/kv/crash/{n:05}", data=value, timeout=5)
                except requests.RequestException:
                    return
                written = n + 1

    writer = threading.Thread(target=write_until_killed)
    writer.start()
    try:
        wait_until(lambda: (data_dir / SNAPSHOT).exists() and written >= 100, 30, "a hundred writes and a snapshot")
        child.signal(signal.SIGKILL)
        child.wait(10)
    finally:
        writer.join(15)

    with (data_dir / SNAPSHOT).open() as f:
        saved = [entry["Key"] for entry in json.load(f)["kv"]["entries"]]
    assert saved, "a snapshot was written before the kill"
    assert saved == [f"crash/{n:05}" for n in range(len(saved))]

    agent, _ = start(procs, data_dir)
    _, keys = agent.client().kv.get("crash/", keys=True)
    assert keys == saved


def test_services_and_checks_survive_a_restart(procs: Processes, tmp_path: Path) -> None:
    """Needs the agent service and check endpoints (api/agent.py and the catalog)."""
    agent, child = start(procs, tmp_path / "data")
    c = agent.client()
    assert c.agent.service.register("web", service_id="web-1", port=8080, check=consul.Check.ttl("60s"))
    assert c.agent.check.register("disk", check=consul.Check.ttl("60s"), check_id="disk-check")
    checks_before = set(c.agent.checks())
    stop_gracefully(child)

    agent, _ = start(procs, tmp_path / "data")
    c = agent.client()
    services = c.agent.services()
    assert services["web-1"]["Service"] == "web"
    assert services["web-1"]["Port"] == 8080
    assert set(c.agent.checks()) == checks_before
    assert "disk-check" in checks_before


def test_intentions_survive_a_restart(procs: Processes, tmp_path: Path) -> None:
    """Needs the intentions endpoints (api/connect.py and intentions.py)."""
    agent, child = start(procs, tmp_path / "data")
    c = agent.client()
    assert c.connect.intentions.upsert("frontend", "orders", action="allow")
    assert c.connect.intentions.upsert("batch", "orders", action="deny")
    stop_gracefully(child)

    agent, _ = start(procs, tmp_path / "data")
    c = agent.client()
    assert c.connect.intentions.read("frontend", "orders")["Action"] == "allow"
    assert c.connect.intentions.check("frontend", "orders") is True
    assert c.connect.intentions.check("batch", "orders") is False
