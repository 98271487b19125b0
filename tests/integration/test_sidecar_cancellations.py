"""Calls that a caller cancels or lets time out, as sidecar B records them on its stream path (app B serves no
reflection, so B relays every call as a stream): its /metrics, its SERVER spans and its access log say
CANCELLED and DEADLINE_EXCEEDED, as the caller and the app saw them, and OK only for the calls that succeeded.

    this test -> sidecar A (outbound) ==mTLS==> sidecar B (inbound, L7 stream path) -> app B (in this process)

Regression: B recorded every such call as OK (metrics, span status code 0, access log), because grpc.aio ends a
call its client abandoned without a code on the server's context.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from meshlet.telemetry.span_file import load_spans
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration import sidecar_mesh
from tests.integration.sidecar_mesh import ECHO_SERVICE, clear_records, inbound_config, outbound_config, started
from tests.support.agents import Agent
from tests.support.plain_app import PlainEchoApp
from tests.support.processes import Processes, eventually
from tests.support.sidecars import SidecarProcess

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

module_procs = sidecar_mesh.module_procs
pki = sidecar_mesh.pki
agent = sidecar_mesh.agent
app_b = sidecar_mesh.app_b
echo = sidecar_mesh.echo

ECHO = f"{ECHO_SERVICE}/Echo"
SERVER_STREAM = f"{ECHO_SERVICE}/ServerStream"
HANG = (("x-echo-hang", "1"),)  # app B answers never: the call ends when its caller gives up
OK_CALLS, TIMED_OUT, CANCELLED_UNARY, CANCELLED_STREAMS = 5, 4, 3, 2
TIMEOUT_S = 0.5
WAIT_S = 20.0  # a bound on failure, never a timing assertion
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cancellations")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_b(
    module_procs: Processes, folder: Path, pki: Path, agent: Agent, app_b: PlainEchoApp
) -> SidecarProcess:
    """b-svc's sidecar with every span in a span file and an access log line per call."""
    config = inbound_config(pki, agent, "b-svc")
    config["telemetry"] = {"access_log": True, "sample_ratio": 1.0, "span_file": str(folder / "b.spans.jsonl")}
    return await started(module_procs, folder, "b", config, app=f"127.0.0.1:{app_b.port}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar_a(module_procs: Processes, folder: Path, pki: Path, agent: Agent, sidecar_b: SidecarProcess) -> Any:
    return await started(module_procs, folder, "a", outbound_config(pki, agent, "a-svc"))


async def cancelled_once_the_app_has_it(call: Any, app: PlainEchoApp, method: str, drain: bool = False) -> None:
    """Cancel `call` once app B is serving it, and wait until app B has seen the cancellation."""
    clear_records(app)
    await eventually(lambda: any(seen.method == method for seen in app.seen), f"app B to serve {method}", WAIT_S)
    call.cancel()
    if drain:
        with pytest.raises(asyncio.CancelledError):
            async for _ in call:
                pass
    else:
        with pytest.raises(asyncio.CancelledError):
            await call
    await eventually(lambda: method in app.cancelled, f"app B to see {method} cancelled", WAIT_S)


def codes_of(text: str, method: str) -> dict[str, float]:
    """Sidecar B's inbound calls of `method` by code, from its /metrics page."""
    return {
        sample.labels["code"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "meshlet_requests_total"
        and sample.labels.get("direction") == "inbound"
        and sample.labels.get("method") == method
    }


async def metrics_page(sidecar: SidecarProcess) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{sidecar.admin_url}/metrics") as response:
        return await response.text()


async def test_cancelled_and_timed_out_calls_are_recorded_as_their_callers_saw_them(
    echo: echo_pb2_grpc.EchoStub, app_b: PlainEchoApp, sidecar_b: SidecarProcess, folder: Path
) -> None:
    request = echo_pb2.EchoRequest(message="x")
    for _ in range(OK_CALLS):
        assert (await echo.Echo(request, timeout=WAIT_S)).message == "x"
    for _ in range(TIMED_OUT):
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await echo.Echo(request, metadata=HANG, timeout=TIMEOUT_S)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(CANCELLED_UNARY):
        await cancelled_once_the_app_has_it(echo.Echo(request, metadata=HANG, timeout=WAIT_S), app_b, "Echo")
    for _ in range(CANCELLED_STREAMS):
        call = echo.ServerStream(request, metadata=HANG, timeout=WAIT_S)
        await cancelled_once_the_app_has_it(call, app_b, "ServerStream", drain=True)

    expected = {
        ECHO: {"OK": OK_CALLS, "DEADLINE_EXCEEDED": TIMED_OUT, "CANCELLED": CANCELLED_UNARY},
        SERVER_STREAM: {"CANCELLED": CANCELLED_STREAMS},
    }
    total = OK_CALLS + TIMED_OUT + CANCELLED_UNARY + CANCELLED_STREAMS

    async def counted() -> bool:  # B counts a call when grpc reports it done, a moment after the caller saw it end
        page = await metrics_page(sidecar_b)
        return sum(sum(codes_of(page, method).values()) for method in expected) >= total

    await eventually(counted, "sidecar B to count every call", WAIT_S)
    page = await metrics_page(sidecar_b)
    assert {method: codes_of(page, method) for method in expected} == expected

    access = [json.loads(line) for line in sidecar_b.output().splitlines() if '"logger": "meshlet.access"' in line]
    logged: dict[str, dict[str, int]] = {}
    for line in access:
        if line["method"] in expected:
            by_code = logged.setdefault(line["method"], {})
            by_code[line["code"]] = by_code.get(line["code"], 0) + 1
    assert logged == expected

    span_file = folder / "b.spans.jsonl"

    def server_spans() -> list[Any]:
        return [s for s in load_spans([span_file]) if s.kind == "SERVER" and s.name in expected]

    await eventually(lambda: len(server_spans()) >= total, "sidecar B to write its server spans", WAIT_S)
    spans: dict[str, dict[str, int]] = {}
    for span in server_spans():
        by_code = spans.setdefault(span.name, {})
        code = CODE_NAMES[span.attributes["rpc.grpc.status_code"]]
        by_code[code] = by_code.get(code, 0) + 1
        # The server conventions: a deadline passed is an error of the server's, a cancellation the caller's.
        assert span.status == ("ERROR" if code == "DEADLINE_EXCEEDED" else "UNSET"), span
    assert spans == expected
