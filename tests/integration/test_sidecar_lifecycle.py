"""The sidecar's life as an operator sees it, with real processes on loopback: a bad config stops it at once with
one line; /ready waits for discovery and the app, whatever order they come up in; losing one of two B apps under
load loses no idempotent call; SIGTERM drains the calls in flight, deregisters and exits 0; a restarted sidecar
registers again. Each test builds its own small mesh (dev agent, plain apps, sidecars), since each one breaks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshlet.security.dev_ca import init_ca, issue
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from meshlet_sidecar.sidecar import QUIET_S
from tests.support.agents import Agent, start_dev_agent
from tests.support.plain_app import plain_app
from tests.support.processes import REPO_ROOT, Processes, eventually, free_port, wait_until
from tests.support.sidecars import (
    SidecarProcess,
    admin_get,
    one_line,
    run_sidecar,
    start_plain_app,
    start_sidecar,
    tls_files,
)

pytestmark = pytest.mark.slow

TRUST_DOMAIN = "meshlet.test"
ECHO_SERVICE = "meshlet_api.echo.v1.Echo"
WAIT_S = 30.0  # a bound on waiting for what must happen, never a timing assertion
HELLO = echo_pb2.EchoRequest(message="hello")
DEFAULT_INBOUND_PORT = 15006
HEARTBEAT_SOONER_S = 5.0  # a bound well inside the 20 s a 60 s TTL leaves between heartbeats, not a timing goal


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    init_ca(certs, TRUST_DOMAIN)
    for service in ("a-svc", "b-svc"):
        issue(certs, service)
    return certs


def b_config(pki: Path, agent_url: str, drain_grace: str = "1s") -> dict[str, Any]:
    return {
        "service": {"name": "b-svc", "check_ttl": "2s", "drain_grace": drain_grace},
        "consul": {"address": agent_url},
        "tls": tls_files(pki, "b-svc"),
    }


def a_config(pki: Path, agent_url: str) -> dict[str, Any]:
    """App A's sidecar: Echo routed to b-svc, every Echo method marked safe to retry."""
    return {
        "service": {"name": "a-svc"},
        "consul": {"address": agent_url},
        "tls": tls_files(pki, "a-svc"),
        "sidecar": {"routes": {ECHO_SERVICE: "b-svc"}},
        "upstreams": {"b-svc": {"retry": {"idempotent": [f"/{ECHO_SERVICE}/*"]}}},
    }


def instances(agent: Agent, service: str, *, passing: bool = False) -> set[int]:
    """The ports `service` is registered at in the agent (all of them, or only those passing)."""
    entries = agent.get(f"/v1/health/service/{service}{'?passing' if passing else ''}")
    return {int(entry["Service"]["Port"]) for entry in entries}


def endpoints_seen_by(sidecar: SidecarProcess, upstream: str) -> int:
    status, body = admin_get(f"{sidecar.admin_url}/clusters?format=json")
    if status != 200:
        return 0
    return sum(len(c.get("endpoints", ())) for c in json.loads(body) if c.get("name") == upstream)


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("file_text", "flags", "named"),
    [
        ("service:\n  check_ttl: soon\n", (), "service.check_ttl"),
        ("sidecar:\n  inbond: 127.0.0.1:15006\n", (), "sidecar.inbond"),
        ("service:\n  name: b-svc\n", ("--upstream", "b-svc"), "--upstream b-svc"),
        ("sidecar:\n  app: 127.0.0.1:50051\n", (), "service.name"),
        ("tls: {source: files, cert: certs/absent.crt, key: certs/absent.key, ca: certs/ca.crt}\n", (), "tls.cert"),
        ("sidecar:\n  descriptor_sets: [absent.bin]\n", (), "sidecar.descriptor_sets[0]"),
    ],
    ids=["bad-value", "unknown-key", "bad-flag", "app-without-name", "missing-tls-file", "missing-descriptor-set"],
)
def test_invalid_config_exits_2_with_one_line_naming_the_field(
    procs: Processes, tmp_path: Path, file_text: str, flags: tuple[str, ...], named: str
) -> None:
    config = tmp_path / "meshlet.yaml"
    config.write_text(file_text)
    code, output = run_sidecar(procs, "--config", str(config), *flags)
    assert code == 2
    assert one_line(output), output
    assert named in output
    assert "Traceback" not in output


def test_relative_paths_in_the_config_file_are_read_from_its_folder(
    procs: Processes, tmp_path: Path, pki: Path
) -> None:
    """The sidecar runs from the repository (its working directory), its config and certificates live elsewhere."""
    config = {
        "service": {"name": "a-svc"},
        "tls": {"source": "files", "cert": "certs/a-svc.crt", "key": "certs/a-svc.key", "ca": "certs/ca.crt"},
    }
    assert pki == tmp_path / "certs"
    sidecar = start_sidecar(procs, tmp_path, "a", config)  # waits for /ready: certificates loaded, listening
    assert not (REPO_ROOT / "certs/a-svc.crt").exists()  # not where the working directory would have found it
    assert str(pki / "a-svc.crt") in admin_get(f"{sidecar.admin_url}/config")[1]


def error_lines(output: str) -> list[str]:
    """The output's lines that are not its JSON log lines: what the sidecar printed as an error."""
    return [line for line in output.splitlines() if line.strip() and not line.startswith("{")]


@pytest.mark.parametrize("listener", ["--admin-addr", "--outbound-addr"])
def test_a_taken_port_exits_1_with_one_line_naming_it(procs: Processes, tmp_path: Path, listener: str) -> None:
    config = tmp_path / "meshlet.yaml"
    config.write_text("service:\n  name: a-svc\n")
    flags = {"--admin-addr": f"127.0.0.1:{free_port()}", "--outbound-addr": f"127.0.0.1:{free_port()}"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        flags[listener] = address
        code, output = run_sidecar(procs, "--config", str(config), *(item for pair in flags.items() for item in pair))
    assert code == 1, output
    [line] = error_lines(output)
    assert f"{address} (Address already in use" in line
    assert listener in line  # the flag that chooses another port
    assert "Traceback" not in output


# ------------------------------------------------------------------------------------------ readiness


def test_ready_is_503_until_discovery_has_answered_and_the_app_is_healthy(
    procs: Processes, tmp_path: Path, pki: Path
) -> None:
    """Started before both its agent and its app, the sidecar waits for them instead of failing."""
    agent_port, app_port = free_port(), free_port()
    config = {**a_config(pki, f"http://127.0.0.1:{agent_port}"), "service": {"name": "a-svc", "check_ttl": "2s"}}
    sidecar = start_sidecar(procs, tmp_path, "a", config, app=f"127.0.0.1:{app_port}", wait_ready=False)

    def waiting_for(*what: str) -> Callable[[], bool]:
        def check() -> bool:
            status, body = sidecar.ready()
            return status == 503 and all(item in body for item in what)

        return check

    wait_until(waiting_for("discovery of b-svc", "app health"), WAIT_S, "/ready to name discovery and the app")
    start_plain_app(procs, "app-a", app_port)
    wait_until(lambda: "app health" not in sidecar.ready()[1], WAIT_S, "/ready to stop waiting for the app")
    assert waiting_for("discovery of b-svc")()

    agent = start_dev_agent(procs, port=agent_port)
    sidecar.wait_ready()
    wait_until(lambda: sidecar.inbound_port in instances(agent, "a-svc", passing=True), WAIT_S, "a-svc to register")


async def test_the_consul_check_of_an_app_without_a_health_service_says_it_was_probed_by_tcp_connect(
    procs: Processes, tmp_path: Path, pki: Path
) -> None:
    agent = start_dev_agent(procs)
    async with plain_app() as app_b:  # grpcio alone: no grpc.health.v1 service
        config = b_config(pki, agent.url)
        await asyncio.to_thread(start_sidecar, procs, tmp_path, "b", config, app=f"127.0.0.1:{app_b.port}")

        def check() -> dict[str, Any]:
            checks = agent.get("/v1/health/checks/b-svc")
            return checks[0] if checks else {}

        await eventually(lambda: check().get("Status") == "passing", "b-svc's check to pass", blocking=True)
        output = (await asyncio.to_thread(check))["Output"]
    assert f"app at 127.0.0.1:{app_b.port}: TCP connect accepted" in output
    assert "grpc.health.v1 status" not in output


async def test_a_sidecar_that_says_ready_is_passing_in_consul_without_waiting_for_its_next_heartbeat(
    procs: Processes, tmp_path: Path, pki: Path
) -> None:
    """A caller that waits for /ready and then calls must find the instance passing: with a 60 s TTL the next
    heartbeat is 20 s away, so the sidecar reports its readiness the moment it has it."""
    agent = start_dev_agent(procs)
    async with plain_app() as app_b:
        config = {**b_config(pki, agent.url), "service": {"name": "b-svc", "check_ttl": "60s"}}
        b = await asyncio.to_thread(start_sidecar, procs, tmp_path, "b", config, app=f"127.0.0.1:{app_b.port}")
        await eventually(
            lambda: b.inbound_port in instances(agent, "b-svc", passing=True),
            "b-svc passing well before the next heartbeat",
            timeout_s=HEARTBEAT_SOONER_S,
            blocking=True,
        )


# ------------------------------------------------------------------------------------------ load and failover


@dataclass
class Load:
    """`callers` loops calling Echo back to back through `port` until the block exits; every failure is kept."""

    port: int
    callers: int = 4
    ok: int = 0
    failures: list[grpc.aio.AioRpcError] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _channel: grpc.aio.Channel | None = None

    async def _call_until_stopped(self, stub: echo_pb2_grpc.EchoStub) -> None:
        while not self._stop.is_set():
            try:
                await stub.Echo(HELLO, timeout=5)
                self.ok += 1
            except grpc.aio.AioRpcError as error:
                self.failures.append(error)

    async def more(self, calls: int) -> None:
        target = self.ok + calls
        await eventually(
            lambda: self.ok >= target, f"{calls} more calls to succeed (failures: {self.failures[:3]})", blocking=True
        )

    async def __aenter__(self) -> Load:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        stub = echo_pb2_grpc.EchoStub(self._channel)
        self._tasks = [asyncio.create_task(self._call_until_stopped(stub)) for _ in range(self.callers)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._channel is not None:
            await self._channel.close()


async def test_killing_one_of_two_b_apps_under_load_fails_no_idempotent_call(
    procs: Processes, tmp_path: Path, pki: Path
) -> None:
    agent = start_dev_agent(procs)
    apps = [start_plain_app(procs, f"app-b{i}") for i in (1, 2)]
    b_sidecars = [
        await asyncio.to_thread(start_sidecar, procs, tmp_path, f"b{i}", b_config(pki, agent.url), app=app.address)
        for i, app in enumerate(apps, 1)
    ]
    ports = {sidecar.inbound_port for sidecar in b_sidecars}
    await eventually(lambda: instances(agent, "b-svc", passing=True) == ports, "both B sidecars to pass", blocking=True)
    sidecar_a = await asyncio.to_thread(start_sidecar, procs, tmp_path, "a", a_config(pki, agent.url))
    await eventually(
        lambda: endpoints_seen_by(sidecar_a, "b-svc") == 2, "sidecar A to find both B sidecars", blocking=True
    )

    async with Load(sidecar_a.outbound_port) as load:
        await load.more(100)
        apps[0].child.signal(signal.SIGKILL)
        gone = b_sidecars[0].inbound_port
        await eventually(
            lambda: gone not in instances(agent, "b-svc", passing=True), "B1 to fail its check", blocking=True
        )
        await load.more(100)

    assert load.failures == []


# ------------------------------------------------------------------------------------------ shutdown and restart


async def test_sigterm_drains_calls_in_flight_deregisters_exits_0_and_a_restart_registers_again(
    procs: Processes, tmp_path: Path, pki: Path
) -> None:
    agent = start_dev_agent(procs)
    async with plain_app() as app_b:
        config = b_config(pki, agent.url, drain_grace="3s")
        sidecar_b = await asyncio.to_thread(start_sidecar, procs, tmp_path, "b", config, app=f"127.0.0.1:{app_b.port}")
        port = sidecar_b.inbound_port
        await eventually(
            lambda: instances(agent, "b-svc", passing=True) == {port}, "b-svc to register and pass", blocking=True
        )
        sidecar_a = await asyncio.to_thread(start_sidecar, procs, tmp_path, "a", a_config(pki, agent.url))

        async with echo_through(sidecar_a) as echo:
            held = [
                asyncio.ensure_future(echo.Echo(HELLO, metadata=(("x-echo-hold", "1"),), timeout=WAIT_S))
                for _ in range(3)
            ]
            await eventually(lambda: len(app_b.seen) == 3, "app B to hold three calls", blocking=True)

            sidecar_b.child.signal(signal.SIGTERM)
            await eventually(lambda: instances(agent, "b-svc") == set(), "sidecar B to deregister", blocking=True)
            assert (await asyncio.to_thread(sidecar_b.ready))[0] == 503  # draining: not ready, still answering

            app_b.release.set()
            replies = await asyncio.gather(*held)
            assert [reply.message for reply in replies] == ["hello"] * 3
            assert await asyncio.to_thread(sidecar_b.child.wait, WAIT_S) == 0

            restarted = await asyncio.to_thread(
                start_sidecar, procs, tmp_path, "b", config, app=f"127.0.0.1:{app_b.port}", inbound_port=port
            )
            await eventually(
                lambda: instances(agent, "b-svc", passing=True) == {port}, "b-svc to register again", blocking=True
            )
            assert restarted.inbound_port == port
            await eventually(
                lambda: endpoints_seen_by(sidecar_a, "b-svc") == 1, "sidecar A to find it again", blocking=True
            )
            assert (await echo.Echo(HELLO, timeout=WAIT_S)).message == "hello"


async def test_a_sidecar_with_nothing_in_flight_stops_without_waiting_out_drain_grace(
    procs: Processes, tmp_path: Path, pki: Path
) -> None:
    """A sidecar restarted under an app that stays up: nothing is in flight, so the stop takes a short quiet period,
    not drain_grace (60 s here, twice what the test waits for the exit)."""
    agent = start_dev_agent(procs)
    async with plain_app() as app_b:
        config = b_config(pki, agent.url, drain_grace="60s")
        sidecar_b = await asyncio.to_thread(start_sidecar, procs, tmp_path, "b", config, app=f"127.0.0.1:{app_b.port}")
        port = sidecar_b.inbound_port
        await eventually(lambda: instances(agent, "b-svc", passing=True) == {port}, "b-svc to pass", blocking=True)
        sidecar_a = await asyncio.to_thread(start_sidecar, procs, tmp_path, "a", a_config(pki, agent.url))
        async with echo_through(sidecar_a) as echo:
            assert (await echo.Echo(HELLO, timeout=WAIT_S)).message == "hello"  # it served, then went quiet

        sidecar_b.child.signal(signal.SIGTERM)

        assert await asyncio.to_thread(sidecar_b.child.wait, WAIT_S) == 0, sidecar_b.output()
        assert instances(agent, "b-svc") == set()


async def test_a_stopping_sidecar_serves_an_outbound_call_in_flight_to_its_end(
    procs: Processes, tmp_path: Path, pki: Path
) -> None:
    agent = start_dev_agent(procs)
    async with plain_app() as app_b:
        await asyncio.to_thread(
            start_sidecar, procs, tmp_path, "b", b_config(pki, agent.url), app=f"127.0.0.1:{app_b.port}"
        )
        await eventually(lambda: bool(instances(agent, "b-svc", passing=True)), "b-svc to pass", blocking=True)
        config_a = {**a_config(pki, agent.url), "service": {"name": "a-svc", "drain_grace": "60s"}}
        sidecar_a = await asyncio.to_thread(start_sidecar, procs, tmp_path, "a", config_a)
        async with echo_through(sidecar_a) as echo:
            held = asyncio.ensure_future(echo.Echo(HELLO, metadata=(("x-echo-hold", "1"),), timeout=WAIT_S))
            await eventually(lambda: len(app_b.seen) == 1, "app B to hold the call", blocking=True)

            sidecar_a.child.signal(signal.SIGTERM)
            await eventually(lambda: "draining" in sidecar_a.ready()[1], "sidecar A to drain", blocking=True)
            await asyncio.sleep(QUIET_S + 1)  # past the quiet period: a sidecar that overlooked the call would stop
            assert sidecar_a.child.alive(), sidecar_a.output()
            app_b.release.set()

            assert (await held).message == "hello"
        assert await asyncio.to_thread(sidecar_a.child.wait, WAIT_S) == 0, sidecar_a.output()


async def test_a_drained_instance_whose_app_restarts_comes_back_into_rotation(
    procs: Processes, tmp_path: Path, pki: Path
) -> None:
    """The preStop hook's POST /drain takes the instance out of Consul's passing set and /ready; an app restarted
    in its place (Kubernetes' restart after a failed liveness probe) brings both back, with no sidecar restart."""
    agent = start_dev_agent(procs)
    app = start_plain_app(procs, "app-b")
    sidecar = await asyncio.to_thread(start_sidecar, procs, tmp_path, "b", b_config(pki, agent.url), app=app.address)
    port = sidecar.inbound_port
    await eventually(lambda: instances(agent, "b-svc", passing=True) == {port}, "b-svc to pass", blocking=True)

    status, answer = await asyncio.to_thread(admin_post, f"{sidecar.admin_url}/drain")
    assert status == 200, answer
    assert instances(agent, "b-svc", passing=True) == set()
    status, waiting = await asyncio.to_thread(sidecar.ready)
    assert status == 503
    assert "maintenance" in waiting

    app.child.signal(signal.SIGTERM)
    await asyncio.to_thread(app.child.wait, WAIT_S)
    start_plain_app(procs, "app-b-restarted", app.port)
    await eventually(
        lambda: instances(agent, "b-svc", passing=True) == {port}, "b-svc back in the passing set", blocking=True
    )
    await eventually(sidecar.is_ready, "the sidecar ready again", blocking=True)


def admin_post(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


@contextlib.asynccontextmanager
async def echo_through(sidecar: SidecarProcess) -> AsyncIterator[echo_pb2_grpc.EchoStub]:
    """App A's Echo stub on `sidecar`'s outbound port."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.outbound_port}") as channel:
        yield echo_pb2_grpc.EchoStub(channel)


def test_a_plaintext_sidecar_listens_inbound_on_loopback_only_unless_told_otherwise(
    procs: Processes, tmp_path: Path
) -> None:
    """``tls.source: off`` and no ``sidecar.inbound`` in the config: the app must not be reachable in plaintext from
    the network. 127.0.0.2 stands for another interface (a wildcard listener answers it, a 127.0.0.1 one does not),
    so the test never leaves loopback."""
    agent = start_dev_agent(procs)
    app = start_plain_app(procs, "open-app")
    config = {
        "service": {"name": "open-svc", "check_ttl": "2s", "drain_grace": "1s"},
        "consul": {"address": agent.url},
        "sidecar": {"app": app.address},  # no inbound: the default port, 15006
    }
    # The default port is fixed, and other suites may hold it for a moment: wait for it rather than fail.
    wait_until(lambda: port_is_free(DEFAULT_INBOUND_PORT), WAIT_S, f"port {DEFAULT_INBOUND_PORT} to be free")
    sidecar = start_sidecar(procs, tmp_path, "open", config)
    _, body = admin_get(f"{sidecar.admin_url}/config")
    assert json.loads(body)["sidecar"]["inbound"] == "127.0.0.1:15006"
    with socket.create_connection(("127.0.0.1", DEFAULT_INBOUND_PORT), timeout=5):
        pass
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", DEFAULT_INBOUND_PORT), 5):
        pass
    output = sidecar.output()
    assert "tls.source is off, so the inbound listener listens on 127.0.0.1:15006 (loopback) only" in output
    assert "authorization for open-svc: source local, no rules, default allow: every caller is allowed" in output


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
