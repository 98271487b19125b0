"""Streams through meshlet-edge, as an HTTP client outside the mesh sees them, every part a real process on
loopback: a dev agent, the echo server (meshlet's SDK, registered as ``echo``, logging what it was cancelled
on), the shop's orders (SDK) with a plain inventory and payments registered beside it, and the edge in front.

    this test --HTTP/NDJSON, SSE, WebSocket--> edge --mesh.channel--> echo | orders -> inventory, payments

The echo server's ServerStream is steered by its message (the edge sends no metadata): ``watch`` streams until
its caller leaves, ``fail-after-<n>:<CODE>`` fails after n messages; a BidiStream message ``fail:<CODE>`` fails
the call."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from meshlet_api.echo.v1 import echo_pb2
from meshlet_shop_api.orders.v1 import orders_pb2
from tests.support.agents import Agent, start_dev_agent
from tests.support.descriptor_sets import write_descriptor_set
from tests.support.processes import Child, Processes, eventually, free_port, http_ok, processes, wait_until
from tests.support.sidecars import START_S, write_config

WAIT_S = 20.0  # bounds waiting for a process, a line or a frame; never a timing assertion
ECHO = "/meshlet_api.echo.v1.Echo"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@dataclass
class Front:
    url: str
    echo_log: Path
    edge: Child


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


def sdk_env(agent: Agent, service: str) -> dict[str, str]:
    return {
        "CONSUL_HTTP_ADDR": agent.url,
        "MESHLET_TLS__SOURCE": "off",
        "MESHLET_SERVICE__NAME": service,
        "MESHLET_SERVICE__CHECK_TTL": "1s",
        "MESHLET_SERVICE__DRAIN_GRACE": "1s",
    }


def start_plain(procs: Processes, agent: Agent, service: str) -> None:
    """A plain grpcio shop service, registered in the agent as a platform would (no check: passing)."""
    port = free_port()
    argv = [sys.executable, "-m", f"meshlet_shop.{service}", "--port", str(port), "--instance-id", f"{service}-1"]
    child = procs.start(argv, name=service)
    wait_until(lambda: f"listening on {port}" in child.output() or not child.alive(), START_S, service)
    assert child.alive(), child.output()
    agent.client().agent.service.register(service, service_id=f"{service}-1", address="127.0.0.1", port=port)


def wait_passing(agent: Agent, service: str, child: Child) -> None:
    try:
        wait_until(lambda: bool(agent.passing(service)) or not child.alive(), START_S, f"{service} to pass")
    except AssertionError:
        raise AssertionError(f"{service} never turned healthy:\n{child.output()}") from None
    assert child.alive(), child.output()


@pytest.fixture(scope="module")
def front(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Front:
    folder = tmp_path_factory.mktemp("edge-streams")
    agent = start_dev_agent(module_procs)
    echo_log = folder / "echo.log"
    echo_argv = [sys.executable, "-m", "tests.support.echo_server", "--name", "echo-1", "--port", str(free_port())]
    echo = module_procs.start([*echo_argv, "--log", str(echo_log)], name="echo", env=sdk_env(agent, "echo"))
    for service in ("inventory", "payments"):
        start_plain(module_procs, agent, service)
    orders_argv = [sys.executable, "-m", "meshlet_shop.orders", "--port", str(free_port())]
    orders = module_procs.start(orders_argv, name="orders", env=sdk_env(agent, "orders"))
    wait_passing(agent, "echo", echo)
    wait_passing(agent, "orders", orders)

    descriptors = write_descriptor_set(folder / "api.pb", echo_pb2.DESCRIPTOR, orders_pb2.DESCRIPTOR)
    config = {
        "tls": {"source": "off"},
        "consul": {"address": agent.url},
        "service": {"name": "edge"},
        "upstreams": {"echo": {"timeout": "300s"}},  # a watch outlives WAIT_S: only its client leaving ends it
        "edge": {
            "services": {"meshlet_api.echo.v1.Echo": "echo", "shop.orders.v1.Orders": "orders"},
            "descriptor_sets": [str(descriptors)],
        },
    }
    config_path = write_config(folder / "edge.yaml", config)
    listen, admin = free_port(), free_port()
    edge = module_procs.start(
        [
            sys.executable, "-m", "meshlet_edge", "--config", str(config_path),
            "--listen", f"127.0.0.1:{listen}", "--admin-addr", f"127.0.0.1:{admin}",
        ],
        name="edge",
    )  # fmt: skip
    ready = f"http://127.0.0.1:{admin}/ready"
    try:
        wait_until(lambda: http_ok(ready) or not edge.alive(), START_S, "the edge to turn ready")
    except AssertionError:
        raise AssertionError(f"the edge never turned ready:\n{edge.output()}") from None
    assert edge.alive(), f"the edge exited at start:\n{edge.output()}"
    return Front(f"http://127.0.0.1:{listen}", echo_log, edge)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


async def stream(
    http: aiohttp.ClientSession, url: str, body: Any = None, accept: str | None = None
) -> tuple[int, str, str]:
    """POST (GET without `body`) and read the whole answer: its status, content type and text."""
    headers = {"Accept": accept} if accept else {}
    method = "GET" if body is None else "POST"
    async with http.request(method, url, json=body, headers=headers) as response:
        return response.status, response.content_type, await response.text()


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def sse_events(text: str) -> list[tuple[str, Any]]:
    """(event type, parsed data) per event, as an EventSource dispatches them."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def detail(status: dict[str, Any], type_url: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [d for d in status.get("details", []) if d["@type"] == type_url]
    assert found, f"no {type_url} in {status}"
    return found[0]


# ------------------------------------------------------------------------------------------ server streaming


async def test_a_server_stream_is_ndjson_one_result_per_line_by_default(front: Front, http) -> None:
    status, media, text = await stream(http, front.url + f"{ECHO}/ServerStream", {"message": "hi"})
    assert (status, media) == (200, NDJSON), text
    lines = ndjson(text)
    assert [line["result"]["message"] for line in lines] == ["hi-0", "hi-1", "hi-2"]
    assert {line["result"]["servedBy"] for line in lines} == {"echo-1"}


async def test_accept_event_stream_gets_server_sent_events_and_a_final_end_event(front: Front, http) -> None:
    status, media, text = await stream(http, front.url + f"{ECHO}/ServerStream", {"message": "hi"}, SSE)
    assert (status, media) == (200, SSE), text
    events = sse_events(text)
    assert [(kind, data.get("message")) for kind, data in events] == [
        ("message", "hi-0"),
        ("message", "hi-1"),
        ("message", "hi-2"),
        ("end", None),
    ]


async def test_an_error_mid_stream_ends_it_with_one_error_object(front: Front, http) -> None:
    url = front.url + f"{ECHO}/ServerStream"
    status, _, text = await stream(http, url, {"message": "fail-after-2:UNAVAILABLE"})
    assert status == 200, text  # the headers went out with the first message
    lines = ndjson(text)
    assert [list(line) for line in lines] == [["result"], ["result"], ["error"]]
    assert lines[-1]["error"]["code"] == 14
    assert "failed after 2" in lines[-1]["error"]["message"]

    status, _, text = await stream(http, url, {"message": "fail-after-1:DATA_LOSS"}, SSE)
    assert status == 200, text
    events = sse_events(text)
    assert [kind for kind, _ in events] == ["message", "error"]
    assert events[-1][1]["code"] == 15


async def test_a_failure_before_the_first_message_is_answered_with_its_http_status(front: Front, http) -> None:
    for accept in (None, SSE):
        status, media, text = await stream(
            http, front.url + f"{ECHO}/ServerStream", {"message": "fail-after-0:NOT_FOUND"}, accept
        )
        assert (status, media) == (404, "application/json"), text
        answer = json.loads(text)
        assert answer["code"] == 5
        assert "failed after 0" in answer["message"]


async def test_an_accept_that_refuses_both_formats_is_a_406(front: Front, http) -> None:
    status, media, text = await stream(http, front.url + f"{ECHO}/ServerStream", {"message": "hi"}, "text/html")
    assert (status, media) == (406, "application/json"), text
    assert json.loads(text)["code"] == 3
    assert NDJSON in json.loads(text)["message"]


def cancelled(front: Front, what: str) -> int:
    """How many calls the echo server saw cancelled, of `what` ("ServerStream cancelled watch", ...)."""
    return front.echo_log.read_text().count(what) if front.echo_log.exists() else 0


async def test_a_client_that_leaves_cancels_the_upstream_call(front: Front, http) -> None:
    def cancelled_watches() -> int:
        return cancelled(front, "ServerStream cancelled watch")

    before = cancelled_watches()
    async with http.post(front.url + f"{ECHO}/ServerStream", json={"message": "watch"}) as response:
        assert response.status == 200
        for _ in range(3):  # the watch runs upstream: every read brings a message
            line = json.loads(await response.content.readline())
            assert line["result"]["message"].startswith("watch-")
        response.close()  # the client goes away without reading the rest
    await eventually(lambda: cancelled_watches() > before, "the echo server to see its watch cancelled", WAIT_S)
    assert "Traceback" not in front.edge.output()  # a client leaving is no error of the edge's


# ------------------------------------------------------------------------------------------ WebSocket


async def test_a_bidi_stream_is_a_websocket_one_frame_per_message_closed_1000(front: Front, http) -> None:
    async with http.ws_connect(front.url + f"{ECHO}/BidiStream") as socket:
        replies = []
        for word in ("ping", "pong"):
            await socket.send_str(json.dumps({"message": word}))
            replies.append(json.loads(await socket.receive_str(timeout=WAIT_S)))
        await socket.send_str(json.dumps({"@end": True}))
        closing = await socket.receive(timeout=WAIT_S)
    assert [reply["result"]["message"] for reply in replies] == ["ping", "pong"]
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert socket.close_code == 1000


async def test_a_client_stream_answers_its_one_reply_after_the_end_frame(front: Front, http) -> None:
    async with http.ws_connect(front.url + f"{ECHO}/ClientStream") as socket:
        for word in ("x", "y", "z"):
            await socket.send_str(json.dumps({"message": word}))
        await socket.send_str('{"@end": true}')
        reply = json.loads(await socket.receive_str(timeout=WAIT_S))
        closing = await socket.receive(timeout=WAIT_S)
    assert reply["result"]["message"] == "x+y+z"
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert socket.close_code == 1000


async def test_a_client_that_closes_its_websocket_first_cancels_the_call(front: Front, http) -> None:
    before = cancelled(front, "BidiStream cancelled watch")
    async with http.ws_connect(front.url + f"{ECHO}/BidiStream") as socket:
        await socket.send_str(json.dumps({"message": "watch"}))
        for _ in range(3):  # the call runs upstream: every frame is a reply
            assert json.loads(await socket.receive_str(timeout=WAIT_S))["result"]["message"].startswith("watch-")
        await socket.close()  # before {"@end": true}: the client is leaving, not done sending
    await eventually(
        lambda: cancelled(front, "BidiStream cancelled watch") > before,
        "the echo server to see its call cancelled",
        WAIT_S,
    )


async def test_an_upstream_failure_is_the_last_frame_and_the_close_code_is_4000_plus_its_code(
    front: Front, http
) -> None:
    async with http.ws_connect(front.url + f"{ECHO}/BidiStream") as socket:
        await socket.send_str(json.dumps({"message": "fail:PERMISSION_DENIED"}))
        last = json.loads(await socket.receive_str(timeout=WAIT_S))
        closing = await socket.receive(timeout=WAIT_S)
    assert last["error"]["code"] == 7
    assert (closing.type, socket.close_code, closing.extra) == (aiohttp.WSMsgType.CLOSE, 4007, "PERMISSION_DENIED")


async def test_a_frame_that_is_not_the_message_is_refused_naming_the_field(front: Front, http) -> None:
    async with http.ws_connect(front.url + f"{ECHO}/BidiStream") as socket:
        await socket.send_str(json.dumps({"message": "ok", "colour": "red"}))
        last = json.loads(await socket.receive_str(timeout=WAIT_S))
        await socket.receive(timeout=WAIT_S)
    assert last["error"]["code"] == 3
    assert [v["field"] for v in detail(last["error"], BAD_REQUEST)["fieldViolations"]] == ["colour"]
    assert socket.close_code == 4003


async def test_a_request_stream_without_upgrade_is_a_426_and_another_verb_a_405(front: Front, http) -> None:
    status, media, text = await stream(http, front.url + f"{ECHO}/ClientStream")
    assert (status, media) == (426, "application/json"), text
    assert json.loads(text)["code"] == 9
    assert "WebSocket" in json.loads(text)["message"]
    async with http.post(front.url + f"{ECHO}/BidiStream", json={"message": "x"}) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"


# ------------------------------------------------------------------------------------------ the shop


async def test_the_shop_watches_an_order_until_its_final_state(front: Front, http) -> None:
    order = {
        "requestId": f"q-{uuid.uuid4().hex[:8]}",
        "customerId": "c-1",
        "items": [{"sku": "sku-tea", "quantity": 1}],
    }
    async with http.post(front.url + "/v1/orders", json=order) as response:
        created = await response.json()
        assert response.status == 200, created
    url = front.url + f"/v1/orders/{created['orderId']}:watch"

    status, media, text = await stream(http, url)
    assert (status, media) == (200, NDJSON), text
    assert [(e["result"]["orderId"], e["result"]["state"]) for e in ndjson(text)] == [(created["orderId"], "PAID")]

    status, _, text = await stream(http, url, accept=SSE)
    assert status == 200, text
    assert [(kind, data.get("state")) for kind, data in sse_events(text)] == [("message", "PAID"), ("end", None)]


async def test_watching_an_order_that_does_not_exist_is_a_404_with_the_shops_reason(front: Front, http) -> None:
    status, media, text = await stream(http, front.url + "/v1/orders/ord-nowhere:watch")
    assert (status, media) == (404, "application/json"), text
    assert detail(json.loads(text), ERROR_INFO)["reason"] == "ORDER_NOT_FOUND"
