"""What the sidecar modules (test_sidecar, test_sidecar_l4, test_sidecar_fast_path) set up alike: a mesh of
their own per module, with its processes, a dev agent, a dev CA that issued a-svc, b-svc and c-svc, plain app B
in the test's event loop, b-svc's sidecar in front of it, and the sidecars' configs.

A module binds the fixtures it uses by name (``agent = sidecar_mesh.agent``), so that they are its own and
module-scoped: they override the function-scoped `agent` of the integration conftest for that module only, and
each module gets a mesh of its own. The module defines ``folder`` (a module-scoped folder of its own name), which
`pki` and the sidecars write into, and ``sidecar_a`` for `echo`. A fixture it defines itself (an app B that
serves reflection, an L4 sidecar B) is used instead of the one here, also by the fixtures here that ask for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from meshlet.security.dev_ca import init_ca, issue
from meshlet_api.echo.v1 import echo_pb2_grpc
from tests.support.agents import Agent, start_dev_agent
from tests.support.plain_app import PlainEchoApp, plain_app
from tests.support.processes import Processes, eventually, processes
from tests.support.sidecars import SidecarProcess, start_sidecar, tls_files

TRUST_DOMAIN = "meshlet.test"
ECHO_SERVICE = "meshlet_api.echo.v1.Echo"


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


@pytest.fixture(scope="module")
def pki(folder: Path) -> Path:
    """The mesh's dev CA in ``folder/certs``, with a certificate for each of a-svc, b-svc and c-svc."""
    certs = folder / "certs"
    init_ca(certs, TRUST_DOMAIN)
    for service in ("a-svc", "b-svc", "c-svc"):
        issue(certs, service)
    return certs


@pytest.fixture(scope="module")
def agent(module_procs: Processes) -> Agent:
    return start_dev_agent(module_procs)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app_b() -> AsyncIterator[PlainEchoApp]:
    async with plain_app() as app:
        yield app


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_b(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, app_b: PlainEchoApp
) -> SidecarProcess:
    """b-svc's sidecar in front of app B: mTLS inbound (L7), intentions that let a-svc in and nobody else."""
    config = inbound_config(pki, agent, "b-svc")
    sidecar = await started(module_procs, folder, "b", config, app=f"127.0.0.1:{app_b.port}")
    # Ready is not yet passing in Consul: that waits for the next heartbeat, and a caller asking before it would be
    # told no instance passes.
    await eventually(lambda: bool(agent.passing("b-svc")), "b-svc to pass its check in Consul", blocking=True)
    return sidecar


@pytest_asyncio.fixture(loop_scope="module")
async def echo(sidecar_a: SidecarProcess) -> AsyncIterator[echo_pb2_grpc.EchoStub]:
    """App A's Echo stub on sidecar A's outbound port (the importing module defines `sidecar_a`)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar_a.outbound_port}") as channel:
        yield echo_pb2_grpc.EchoStub(channel)


def clear_records(*apps: PlainEchoApp) -> None:
    """Forget what the apps saw, so that each test sees only its own calls."""
    for app in apps:
        app.seen.clear()
        app.cancelled.clear()
        app.cancellation.clear()


async def started(*args: Any, **kwargs: Any) -> SidecarProcess:
    """start_sidecar in a thread: app B lives on this event loop, which must keep turning to answer sidecar B's
    health probes while the test waits for /ready."""
    return await asyncio.to_thread(start_sidecar, *args, **kwargs)


def inbound_config(pki: Path, agent: Agent, service: str, **sidecar: Any) -> dict[str, Any]:
    """A sidecar in front of `service`'s app: mTLS inbound, intentions that let a-svc in and nobody else;
    `sidecar` is its ``sidecar`` section."""
    return {
        "service": {"name": service, "check_ttl": "2s", "drain_grace": "1s"},
        "consul": {"address": agent.url},
        "tls": tls_files(pki, service),
        "authz": {"default": "deny", "rules": [{"from": "a-svc", "to": service, "action": "allow"}]},
        "sidecar": sidecar,
    }


def outbound_config(pki: Path, agent: Agent, service: str, **sections: Any) -> dict[str, Any]:
    """An outbound-only sidecar for `service` that routes the Echo service to b-svc; `sections` adds to it
    (``upstreams=...``)."""
    return {
        "service": {"name": service},
        "consul": {"address": agent.url},
        "tls": tls_files(pki, service),
        "sidecar": {"routes": {ECHO_SERVICE: "b-svc"}},
        **sections,
    }
