"""A call an intention denies at the far sidecar comes back to the app as PERMISSION_DENIED, every time, and does
not count against the far endpoint's breaker.

Regression: the far side ends such a call before reading its request stream, and grpc.aio then may replace the
status with INTERNAL "Internal error from Core"; before the fix most denied calls came back INTERNAL and soon as
UNAVAILABLE "circuit open", because the breaker counted them as endpoint failures.
"""

from __future__ import annotations

import collections
from pathlib import Path

import grpc
import pytest

from meshlet.errors import ErrorReason, error_info
from meshlet.security.dev_ca import init_ca, issue
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Processes, wait_until
from tests.support.sidecars import start_plain_app, start_sidecar, tls_files

pytestmark = pytest.mark.slow

TRUST_DOMAIN = "meshlet.test"


async def test_denied_calls_through_two_sidecars_are_permission_denied_every_time(
    procs: Processes, tmp_path: Path
) -> None:
    agent: Agent = start_dev_agent(procs)
    init_ca(tmp_path, trust_domain=TRUST_DOMAIN)
    issue(tmp_path, "vault")
    issue(tmp_path, "web")
    app = start_plain_app(procs, "vault-app")
    common = {"consul": {"address": agent.url}, "service": {"check_ttl": "2s", "drain_grace": "1s"}}
    start_sidecar(
        procs,
        tmp_path,
        "vault",
        {**common, "service": {**common["service"], "name": "vault"}, "tls": tls_files(tmp_path, "vault"),
         "authz": {"default": "deny", "rules": []}},
        app=app.address,
    )  # fmt: skip
    wait_until(lambda: bool(agent.passing("vault")), 30, "vault's sidecar to register and pass its check")
    web = start_sidecar(
        procs,
        tmp_path,
        "web",
        {**common, "service": {**common["service"], "name": "web"}, "tls": tls_files(tmp_path, "web"),
         "sidecar": {"routes": {"meshlet_api.echo.v1.Echo": "vault"}}, "upstreams": {"vault": {}}},
    )  # fmt: skip

    outcomes: collections.Counter[str] = collections.Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{web.outbound_port}") as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(60):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.Echo(echo_pb2.EchoRequest(message="open"), timeout=5)
            info = error_info(denied.value)
            outcomes[f"{denied.value.code().name}/{info.reason if info else '-'}"] += 1

    assert outcomes == {f"PERMISSION_DENIED/{ErrorReason.INTENTION_DENIED}": 60}, outcomes
