"""The event loop a meshlet process runs on, as an operator sets and sees it: MESHLET_LOOP=uvloop gives two
sidecars that say so in their first log lines and carry a call between them (grpc.aio on uvloop, mTLS and all);
a value that is no loop stops a process at once with one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from meshlet_api.echo.v1 import echo_pb2_grpc
from tests.integration import sidecar_mesh
from tests.integration.sidecar_mesh import inbound_config, outbound_config, started
from tests.support import echo_calls
from tests.support.agents import Agent
from tests.support.plain_app import PlainEchoApp
from tests.support.processes import Processes, free_port, meshlet_argv
from tests.support.sidecars import SidecarProcess, one_line, run_sidecar

pytestmark = pytest.mark.slow

module_procs = sidecar_mesh.module_procs
pki = sidecar_mesh.pki
agent = sidecar_mesh.agent
app_b = sidecar_mesh.app_b

ON_UVLOOP = {"MESHLET_LOOP": "uvloop"}
WAIT_S = 30.0  # a bound on a process that must exit, never a timing assertion


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loops")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_b(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, app_b: PlainEchoApp
) -> SidecarProcess:
    config = inbound_config(pki, agent, "b-svc")
    return await started(module_procs, folder, "b", config, app=f"127.0.0.1:{app_b.port}", env=ON_UVLOOP)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_a(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, sidecar_b: SidecarProcess
) -> SidecarProcess:
    return await started(module_procs, folder, "a", outbound_config(pki, agent, "a-svc"), env=ON_UVLOOP)


def loop_lines(output: str) -> list[dict[str, Any]]:
    """The process's JSON log lines that say which event loop it runs."""
    lines = (json.loads(line) for line in output.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("logger") == "meshlet.runtime"]


@pytest.mark.asyncio(loop_scope="module")
async def test_sidecars_on_uvloop_say_so_and_carry_a_call(
    sidecar_a: SidecarProcess, sidecar_b: SidecarProcess, app_b: PlainEchoApp
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar_a.outbound_port}") as channel:
        await echo_calls.assert_unary_relayed(echo_pb2_grpc.EchoStub(channel), app_b)
    for sidecar in (sidecar_a, sidecar_b):
        [line] = loop_lines(sidecar.output())  # one line, at start
        assert (line["loop"], line["loop_class"], line["reason"]) == ("uvloop", "uvloop.Loop", "MESHLET_LOOP=uvloop")


def test_a_sidecar_with_a_bogus_loop_exits_2_with_one_line(procs: Processes, tmp_path: Path) -> None:
    config = tmp_path / "meshlet.yaml"
    config.write_text("service:\n  name: a-svc\n")
    code, output = run_sidecar(procs, "--config", str(config), env={"MESHLET_LOOP": "bogus"})
    assert code == 2
    assert one_line(output), output
    assert output.startswith("meshlet-sidecar: invalid config: MESHLET_LOOP = 'bogus'")
    assert "asyncio, uvloop or auto" in output


def test_the_dev_agent_with_a_bogus_loop_exits_2_with_one_line(procs: Processes) -> None:
    argv = meshlet_argv("dev-agent", "--http-addr", f"127.0.0.1:{free_port()}")
    agent = procs.start(argv, name="dev-agent", env={"MESHLET_LOOP": "bogus"})
    assert agent.wait(WAIT_S) == 2
    assert one_line(agent.output()), agent.output()
    assert agent.output().startswith("meshlet dev-agent: invalid config: MESHLET_LOOP = 'bogus'")
