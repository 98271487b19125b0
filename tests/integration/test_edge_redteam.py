"""What a hostile or sloppy HTTP client found wrong with meshlet-edge, each kept as the test that found it: the
stack of tests/integration/test_edge_streams.py (a dev agent, the echo server, the shop's orders, a real edge
process), attacked over raw HTTP where a client library would have tidied the request up.

Each answer must be the one error shape (google.rpc.Status JSON) with the right status, never a value the client
did not send reaching the upstream unseen."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from openapi_spec_validator import validate

from tests.integration import test_edge_streams as streams
from tests.integration.test_edge_streams import ECHO, WAIT_S, Front
from tests.support.processes import free_port, http_ok, wait_until
from tests.support.sidecars import START_S

module_procs, front, http = streams.module_procs, streams.front, streams.http  # the streams suite's stack

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


async def raw(to: Front, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as the bytes given (no client library to fix it up) and read the one answer."""
    address = urlsplit(to.url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 20)
        return status, headers, body
    finally:
        writer.close()


def violated(status: dict[str, Any]) -> list[str]:
    """The fields a google.rpc.Status's BadRequest names."""
    found = [d for d in status.get("details", []) if d["@type"] == BAD_REQUEST]
    assert found, f"no BadRequest in {status}"
    return [v["field"] for v in found[0]["fieldViolations"]]


async def post_json(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, Any]:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        return response.status, json.loads(await response.read())


# ------------------------------------------------------------------------------------------ aiohttp's own answers


async def test_a_request_line_past_the_limit_is_the_one_error_shape_not_aiohttps_text(front: Front) -> None:
    query = "&".join(f"filter={i}" for i in range(3000))  # a sloppy client's 'thousands of params'
    status, headers, body = await raw(front, f"GET /v1/orders?{query} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
    assert status == 400
    assert headers["content-type"].startswith("application/json"), body
    answer = json.loads(body)
    assert answer["code"] == 3
    assert "longer than" in answer["message"]
    assert "filter=0" not in body.decode()  # aiohttp's page echoed the client's bytes back
    assert headers["x-request-id"]


async def test_a_header_past_the_limit_is_the_one_error_shape(front: Front) -> None:
    request = f"GET /v1/orders HTTP/1.1\r\nHost: edge\r\nX-Request-Id: {'a' * 10_000}\r\n\r\n".encode()
    status, _, body = await raw(front, request)
    assert status == 400
    assert json.loads(body)["code"] == 3, body


async def test_a_request_that_is_not_http_is_the_one_error_shape(front: Front) -> None:
    status, headers, body = await raw(front, b"GET /v1/orders HTTP/1.1\r\nHost: edge\r\nBroken header\r\n\r\n")
    assert status == 400
    assert headers["content-type"].startswith("application/json"), body
    assert json.loads(body)["code"] == 3


# ------------------------------------------------------------------------------------------ strict JSON


async def test_a_body_that_names_a_field_twice_is_refused_not_last_one_wins(front: Front, http) -> None:
    status, answer = await post_json(http, front.url + ECHO + "/Echo", b'{"message": "a", "message": "b"}')
    assert status == 400, answer
    assert violated(answer) == ["message"]


async def test_nan_and_infinity_literals_are_not_json(front: Front, http) -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        status, answer = await post_json(http, front.url + ECHO + "/Echo", b'{"message": "x", "payload": %s}' % literal)
        assert status == 400, answer
        assert violated(answer) == ["body"]
        assert "not JSON" in answer["message"]


async def test_a_websocket_frame_is_strict_json_too(front: Front, http) -> None:
    async with http.ws_connect(front.url + ECHO + "/BidiStream") as socket:
        await socket.send_str('{"message": "a", "message": "b"}')
        frame = await socket.receive_json()
        assert violated(frame["error"]) == ["message"]
        await socket.receive()
        assert socket.close_code == 4003


# ------------------------------------------------------------------------------------------ query and path


async def test_a_non_repeated_field_set_twice_by_the_query_is_refused(front: Front, http) -> None:
    for query in ("page_size=1&page_size=2", "page_size=1&pageSize=2"):
        async with http.get(front.url + "/v1/orders?" + query) as response:
            answer = json.loads(await response.read())
            assert response.status == 400, (query, answer)
            assert violated(answer)[0] in ("page_size", "pageSize")


async def test_a_path_variable_that_is_not_utf8_is_refused_not_changed(front: Front, http) -> None:
    for escaped in ("%ff", "%C0%AF", "ord%E9"):  # a stray byte, overlong UTF-8, Latin-1
        async with http.get(front.url + "/v1/orders/" + escaped, allow_redirects=False) as response:
            answer = json.loads(await response.read())
            assert response.status == 400, (escaped, answer)  # not a 404 for an order named "\ufffd"
            assert violated(answer) == ["order_id"]


async def test_a_query_value_that_is_not_utf8_is_refused_not_changed(front: Front, http) -> None:
    async with http.get(front.url + "/v1/orders?filter=%ff") as response:
        answer = json.loads(await response.read())
        assert response.status == 400, answer
        assert violated(answer) == ["filter"]
        assert "UTF-8" in answer["message"]


async def test_utf8_in_a_path_variable_still_arrives_whole(front: Front, http) -> None:
    async with http.get(front.url + "/v1/orders/ord-%C3%A9") as response:
        answer = json.loads(await response.read())
        assert response.status == 404, answer  # the shop's answer: the id reached it as sent
        assert "ord-é" in answer["message"]


# ------------------------------------------------------------------------------------------ grpc-timeout


async def test_the_longest_grpc_timeout_is_a_long_deadline_not_an_expired_one(front: Front, http) -> None:
    body = json.dumps({"message": "x"}).encode()
    headers = {"Content-Type": "application/json", "grpc-timeout": "99999999H"}
    async with http.post(front.url + ECHO + "/Echo", data=body, headers=headers) as response:
        answer = json.loads(await response.read())
        assert response.status == 200, answer
        assert answer["message"] == "x"


# ------------------------------------------------------------------------------------------ the OpenAPI document


async def test_the_openapi_document_says_how_streams_answer(front: Front, http) -> None:
    async with http.get(front.url + "/openapi.json") as response:
        document = await response.json()
    validate(document)
    watch = document["paths"]["/v1/orders/{order_id}:watch"]["get"]["responses"]
    assert set(watch["200"]["content"]) == {"application/x-ndjson", "text/event-stream"}  # was one JSON OrderEvent
    assert "406" in watch
    bidi = document["paths"]["/meshlet_api.echo.v1.Echo/BidiStream"]["get"]
    assert "requestBody" not in bidi  # was a JSON body on a GET: the messages travel in frames
    assert {"101", "426"} <= set(bidi["responses"])
    assert "200" not in bidi["responses"]  # a WebSocket route never answers 200
    async with http.get(front.url + "/meshlet_api.echo.v1.Echo/BidiStream") as response:
        assert str(response.status) in bidi["responses"]


# ------------------------------------------------------------------------------------------ shutdown


async def test_sigterm_ends_open_streams_in_the_one_error_shape_not_mid_body(front: Front, module_procs) -> None:
    """A watch outlives any drain grace: it was cut when the grace ran out, a truncated chunked answer that a
    client reads as a network failure, and the WebSocket closed without its error frame."""
    config = front.edge.argv[front.edge.argv.index("--config") + 1]
    listen, admin = free_port(), free_port()
    argv = [
        sys.executable, "-m", "meshlet_edge", "--config", config,
        "--listen", f"127.0.0.1:{listen}", "--admin-addr", f"127.0.0.1:{admin}",
    ]  # fmt: skip
    edge = module_procs.start(argv, name="edge-drained", env={"MESHLET_SERVICE__DRAIN_GRACE": "1s"})
    wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/ready") or not edge.alive(), START_S, "the edge")
    url = f"http://127.0.0.1:{listen}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session,
        session.post(url + ECHO + "/ServerStream", json={"message": "watch"}) as watch,
        session.ws_connect(url + ECHO + "/BidiStream") as socket,
    ):
        assert "result" in json.loads(await watch.content.readline())
        await socket.send_str('{"message": "a"}')
        assert "result" in await socket.receive_json()
        edge.signal(signal.SIGTERM)
        last = json.loads((await watch.read()).splitlines()[-1])  # read whole: no ClientPayloadError
        assert last["error"]["code"] == 14, last
        assert "shutting down" in last["error"]["message"]
        frame = await socket.receive_json()
        assert frame["error"]["code"] == 14, frame
        await socket.receive()
        assert socket.close_code == 4014
    assert edge.wait(WAIT_S) == 0, edge.output()
