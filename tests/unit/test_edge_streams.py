"""Streaming at the edge, the pure parts: which stream format an Accept header gets, how messages, failures and
the end look on the wire, the WebSocket close code of a status, streaming methods in the route table, and the
shop's order watch over a storage whose order changes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from meshlet.transport.streams import ReplayableRequests
from meshlet_api.echo.v1 import echo_pb2
from meshlet_edge import framing
from meshlet_edge.routes import build_routes, load_pool
from meshlet_edge.websocket import _Requests
from meshlet_shop.orders.watching import order_events
from meshlet_shop_api.orders.v1 import orders_pb2


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, framing.NDJSON),
        ("", framing.NDJSON),
        ("*/*", framing.NDJSON),
        ("application/json", framing.NDJSON),
        ("application/x-ndjson", framing.NDJSON),
        ("text/event-stream", framing.SSE),
        ("text/*", framing.SSE),
        ("text/event-stream, application/x-ndjson", framing.NDJSON),
        ("application/x-ndjson;q=0.5, text/event-stream", framing.SSE),
        ("*/*;q=0.1, text/event-stream", framing.SSE),
        ("text/event-stream;q=0, */*", framing.NDJSON),
        ("text/html", None),
        ("application/x-ndjson;q=0, text/event-stream;q=0", None),
    ],
)
def test_accept_chooses_the_stream_format(accept: str | None, chosen: str | None) -> None:
    assert framing.stream_format(accept) == chosen


def test_ndjson_wraps_messages_and_the_failure_so_that_each_line_says_which_it_is() -> None:
    status = '{"code":5,"message":"gone"}'
    lines = framing.ndjson_result('{"message":"a"}') + framing.ndjson_error(status)
    assert [json.loads(line) for line in lines.splitlines()] == [
        {"result": {"message": "a"}},
        {"error": {"code": 5, "message": "gone"}},
    ]


def test_sse_sends_messages_as_data_a_failure_as_an_error_event_and_the_end_as_an_end_event() -> None:
    assert framing.sse_message('{"a":1}') == b'data: {"a":1}\n\n'
    assert framing.sse_error('{"code":14}') == b'event: error\ndata: {"code":14}\n\n'
    assert framing.SSE_END.startswith(b"event: end\ndata: ")  # with data, or a browser never dispatches it


def test_a_websocket_closes_1000_on_ok_and_4000_plus_the_code_otherwise() -> None:
    assert framing.ws_close(grpc.StatusCode.OK) == (1000, b"OK")
    assert framing.ws_close(grpc.StatusCode.NOT_FOUND) == (4005, b"NOT_FOUND")
    assert framing.ws_close(grpc.StatusCode.UNAVAILABLE) == (4014, b"UNAVAILABLE")


def test_streaming_methods_are_routed_and_a_request_stream_is_a_websocket_get() -> None:
    assert echo_pb2.DESCRIPTOR is not None
    assert orders_pb2.DESCRIPTOR is not None
    table = build_routes({"meshlet_api.echo.v1.Echo": "echo", "shop.orders.v1.Orders": "orders"}, load_pool(()))
    server = table.match("POST", "/meshlet_api.echo.v1.Echo/ServerStream")
    assert server is not None
    assert server.route.server_streaming
    assert not server.route.client_streaming
    for method in ("ClientStream", "BidiStream"):
        found = table.match("GET", f"/meshlet_api.echo.v1.Echo/{method}")
        assert found is not None
        assert found.route.client_streaming
        assert found.route.body == "*"
        assert table.allowed(f"/meshlet_api.echo.v1.Echo/{method}") == ["GET"]
    watch = table.match("GET", "/v1/orders/ord-1:watch")
    assert watch is not None
    assert (watch.route.path, watch.variables) == ("/shop.orders.v1.Orders/WatchOrder", {"order_id": "ord-1"})
    plain = table.match("GET", "/v1/orders/ord-1")
    assert plain is not None
    assert plain.route.path == "/shop.orders.v1.Orders/GetOrder"


def order(state: str) -> orders_pb2.Order:
    return orders_pb2.Order(order_id="ord-1", customer_id="c-1", state=state)


async def events(first: orders_pb2.Order, later: Sequence[orders_pb2.Order | None], bound_s: float = 60.0) -> list[str]:
    now = [0.0]
    reads = iter(later)

    async def read(order_id: str) -> orders_pb2.Order | None:
        assert order_id == "ord-1"
        return next(reads)

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    found: AsyncIterator[orders_pb2.OrderEvent] = order_events(
        first, read, poll_s=1.0, bound_s=bound_s, clock=lambda: now[0], sleep=sleep
    )
    return [e.state async for e in found]


async def test_a_watch_sends_the_state_then_each_change_and_ends_at_a_final_state() -> None:
    later = [order("RESERVED"), order("RESERVED"), order("PAID"), order("PAID")]
    assert await events(order("NEW"), later) == ["NEW", "RESERVED", "PAID"]


async def test_a_watch_of_an_order_in_a_final_state_sends_that_state_alone() -> None:
    assert await events(order("PAID"), []) == ["PAID"]


async def test_a_watch_ends_at_its_bound_or_when_the_order_is_forgotten() -> None:
    assert await events(order("NEW"), [order("NEW")] * 10, bound_s=3.0) == ["NEW"]
    assert await events(order("NEW"), [None]) == ["NEW"]


async def test_a_websocket_call_that_ends_leaves_no_read_of_its_requests_pending() -> None:
    """The mesh reads a request stream through one pending read kept across retries; a call cancelled while it
    waited for the client's next frame left that task pending, which asyncio logs as an error once collected
    ("Task was destroyed but it is pending!"), once per WebSocket client that went away."""

    queue: asyncio.Queue[object] = asyncio.Queue()
    requests = _Requests(queue)
    replay = ReplayableRequests(requests.messages(), 1024)
    attempt = asyncio.ensure_future(anext(replay.replay()))  # an attempt's writer, waiting for the next frame
    await asyncio.sleep(0.01)
    attempt.cancel()  # the call ended: the client went away
    requests.stop()
    await asyncio.sleep(0.01)
    pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]
    assert pending == []
