"""``meshlet intention`` run as a user runs it (a subprocess, CONSUL_HTTP_ADDR pointing at a real dev agent):
create, list, check, a create refused while the pair has an intention, --replace, delete; and a call an
intention denies, allowed by running the very command its PERMISSION_DENIED message suggests."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest

from meshlet.config import load_config
from meshlet.errors import ErrorReason, error_info
from meshlet.mesh import Mesh
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.conftest import EchoFleet
from tests.integration.test_security import DevPki
from tests.support.agents import Agent
from tests.support.processes import Processes, eventually, meshlet_argv

pytestmark = pytest.mark.slow

HELLO = echo_pb2.EchoRequest(message="hello")


def intention(agent_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONSUL_HTTP_ADDR": agent_url}
    return subprocess.run(meshlet_argv("intention", *args), env=env, capture_output=True, text=True, timeout=60)


def test_create_list_check_refuse_replace_and_delete_as_consuls_cli_does(agent: Agent) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return intention(agent.url, *args)

    checked = run("check", "client", "plain")
    assert (checked.returncode, checked.stdout) == (0, "Allowed\n"), "no intention: the dev agent's default allows"

    created = run("create", "--deny", "client", "plain")
    assert (created.returncode, created.stdout) == (0, "Created: client => plain (deny)\n")
    assert run("create", "--deny", "*", "plain").returncode == 0

    listed = run("list")
    assert listed.returncode == 0
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["Source", "Action", "Destination", "Precedence"],
        ["client", "deny", "plain", "9"],
        ["*", "deny", "plain", "8"],
    ]
    denied = run("check", "client", "plain")
    assert (denied.returncode, denied.stdout) == (1, "Denied\n")

    refused = run("create", "--allow", "client", "plain")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "an intention client => plain (deny) already exists" in refused.stderr
    assert "meshlet intention create --allow --replace client plain" in refused.stderr
    assert agent.client().connect.intentions.read("client", "plain")["Action"] == "deny", "refused: unchanged"

    replaced = run("create", "--allow", "--replace", "client", "plain")
    assert (replaced.returncode, replaced.stdout) == (0, "Created: client => plain (allow)\n")
    assert run("check", "client", "plain").stdout == "Allowed\n"
    assert run("check", "other", "plain").stdout == "Denied\n", "the wildcard deny still holds for the others"

    deleted = run("delete", "client", "plain")
    assert (deleted.returncode, deleted.stdout) == (0, "Intention deleted.\n")
    assert agent.client().connect.intentions.read("client", "plain") is None
    again = run("delete", "client", "plain")
    assert again.returncode == 1
    assert "no intention client => plain" in again.stderr


@pytest.mark.parametrize("verb", ["check", "create", "delete"])
def test_an_empty_service_name_is_a_usage_error_not_an_answer(agent: Agent, verb: str) -> None:
    """``meshlet intention check "$SOURCE" db`` with $SOURCE unset asked Consul about "" and printed Allowed (exit
    0): a typo read as a verdict. An empty name is no service: exit 2 with one line, Consul never asked."""
    before = agent.client().connect.intentions.list()

    result = intention(agent.url, verb, "", "db")

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "SOURCE is empty: give a service name or '*'" in result.stderr
    assert agent.client().connect.intentions.list() == before


def test_an_unreachable_consul_is_one_line_naming_its_address(tmp_path: Path) -> None:
    for verb, expected in ((["list"], 1), (["check", "client", "plain"], 2)):
        result = intention("http://127.0.0.1:1", *verb)
        assert result.returncode == expected
        assert result.stderr.count("\n") == 1, result.stderr
        assert "Consul at http://127.0.0.1:1 cannot be reached" in result.stderr
        assert "CONSUL_HTTP_ADDR" in result.stderr


async def test_a_denied_call_is_allowed_by_the_command_its_message_suggests(
    procs: Processes, agent: Agent, tmp_path: Path
) -> None:
    pki = DevPki(tmp_path / "pki")
    fleet = EchoFleet(procs, agent, service=f"plain-{uuid.uuid4().hex[:6]}")
    pki.issue(fleet.service)
    pki.issue("client")
    fleet.start("plain", env={**pki.tls_env(fleet.service), "MESHLET_AUTHZ__SOURCE": "consul"})
    assert (await asyncio.to_thread(intention, agent.url, "create", "--deny", "client", fleet.service)).returncode == 0

    config = load_config(None, env={"CONSUL_HTTP_ADDR": agent.url}, overrides={"tls": pki.tls_config("client")})
    async with Mesh(config) as mesh:
        stub = echo_pb2_grpc.EchoStub(mesh.channel(fleet.service))
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.Echo(HELLO, timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(denied.value)
        assert info is not None
        assert info.reason == ErrorReason.INTENTION_DENIED
        suggested = re.search(r"run: (meshlet intention [^(]+?) \(", denied.value.details() or "")
        assert suggested is not None, denied.value.details()
        assert suggested[1] == f"meshlet intention create --allow --replace client {fleet.service}"

        ran = await asyncio.to_thread(intention, agent.url, *shlex.split(suggested[1])[2:])
        assert ran.returncode == 0, ran.stderr

        async def served() -> bool:
            try:
                reply = await stub.Echo(HELLO, timeout=5)
                return bool(reply.served_by == "plain")
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.PERMISSION_DENIED:
                    raise
                return False

        await eventually(served, "the allow intention to reach the server", timeout_s=60)
