"""The edge's HTTP hygiene as a client outside the mesh sees it, each part real and on loopback: a dev agent, the
SDK echo server (tests/support/echo_server.py: ``metadata?`` answers the metadata it received, ``x-echo-*``
headers make it fail with a pushback or a RetryInfo), and the edge process in front of it. The echo server is
registered as upstream ``echo`` behind a relay that reads the HTTP/2 the edge's channel sends
(tests/support/h2_sniffer.py), so the gRPC compression of ``upstreams.echo.compression: gzip`` is seen on the
wire."""

from __future__ import annotations

import base64
import gzip
import json
import re
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from meshlet_api.echo.v1 import echo_pb2
from tests.support.agents import Agent, start_dev_agent
from tests.support.descriptor_sets import write_descriptor_set
from tests.support.h2_sniffer import Sniffer
from tests.support.processes import Child, Processes, free_port, processes, wait_until
from tests.support.sidecars import START_S, write_config

WAIT_S = 20.0  # bounds waiting for a process or a log line, never a timing assertion
MAX_BODY = 64 * 1024  # edge.max_body_bytes here: small, so that the limits are cheap to reach
ECHO = "/meshlet_api.echo.v1.Echo/Echo"  # the default POST binding: Echo has no google.api.http rule
FORWARDED = ["X-Tenant", "x-echo-fail", "x-echo-pushback-ms", "x-echo-retry-delay-ms"]
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@dataclass
class Front:
    edge: Child
    url: str
    sniffer: Sniffer


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


def register(agent: Agent, name: str, port: int) -> None:
    """An instance of `name` at 127.0.0.1:`port` with no check, which Consul counts as passing."""
    service = {"Name": name, "ID": f"{name}-relayed", "Address": "127.0.0.1", "Port": port}
    request = urllib.request.Request(
        f"{agent.url}/v1/agent/service/register", data=json.dumps(service).encode(), method="PUT"
    )
    urllib.request.urlopen(request, timeout=5).close()


def start_edge(procs: Processes, folder: Path, config: dict[str, Any], name: str = "edge") -> tuple[Child, int]:
    config_path = write_config(folder / f"{name}.yaml", config)
    listen = free_port()
    argv = [
        sys.executable, "-m", "meshlet_edge", "--config", str(config_path),
        "--listen", f"127.0.0.1:{listen}", "--admin-addr", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    return procs.start(argv, name=name), listen


@pytest.fixture(scope="module")
def front(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    folder = tmp_path_factory.mktemp("edge-http")
    agent = start_dev_agent(module_procs)
    port = free_port()
    echo = module_procs.start(
        [sys.executable, "-m", "tests.support.echo_server", "--name", "echo-1", "--port", str(port)],
        name="echo-1",
        env={"CONSUL_HTTP_ADDR": agent.url, "MESHLET_SERVICE__NAME": "echo-direct"},
    )
    wait_until(lambda: bool(agent.passing("echo-direct")) or not echo.alive(), START_S, "the echo server")
    assert echo.alive(), echo.output()
    sniffer = Sniffer(port)
    register(agent, "echo", sniffer.port)
    descriptors = write_descriptor_set(folder / "echo.pb", echo_pb2.DESCRIPTOR)
    config = {
        "tls": {"source": "off"},
        "consul": {"address": agent.url},
        "service": {"name": "edge"},
        "telemetry": {"access_log": True},
        "edge": {
            "services": {"meshlet_api.echo.v1.Echo": "echo"},
            "descriptor_sets": [str(descriptors)],
            "forward_headers": FORWARDED,
            "max_body_bytes": MAX_BODY,
        },
        "upstreams": {"echo": {"compression": "gzip"}},
    }
    edge, listen = start_edge(module_procs, folder, config)
    url = f"http://127.0.0.1:{listen}"
    try:
        wait_until(lambda: edge_answers(url) or not edge.alive(), START_S, "the edge to serve echo")
    except AssertionError:
        raise AssertionError(f"the edge never answered:\n{edge.output()}") from None
    assert edge.alive(), f"the edge exited at start:\n{edge.output()}"
    yield Front(edge, url, sniffer)
    sniffer.close()


def edge_answers(url: str) -> bool:
    request = urllib.request.Request(url + ECHO, data=b'{"message": "up?"}', method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that shows the bytes as they came: no decompression behind the test's back."""
    timeout = aiohttp.ClientTimeout(total=WAIT_S)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        yield session


async def post(
    http: aiohttp.ClientSession, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    sent = {"Content-Type": "application/json", "Accept-Encoding": "identity", **(headers or {})}
    present = {k: v for k, v in sent.items() if v is not None}
    skip = [] if "Content-Type" in present else ["Content-Type"]  # else aiohttp says application/octet-stream
    async with http.post(path, data=body, headers=present, skip_auto_headers=skip) as response:
        return response.status, await response.read(), response


async def echo(front: Front, http: aiohttp.ClientSession, message: str, **headers: str) -> tuple[int, Any, Any]:
    status, body, response = await post(http, front.url + ECHO, json.dumps({"message": message}).encode(), headers)
    return status, json.loads(body), response


def upstream_saw(reply: dict[str, Any]) -> dict[str, str]:
    """The metadata the echo server received, from its answer to ``metadata?``."""
    found: dict[str, str] = json.loads(reply["message"])
    return found


# ------------------------------------------------------------------------------------------ X-Request-Id


async def test_the_callers_request_id_is_answered_and_reaches_the_upstream_and_the_log(front: Front, http) -> None:
    sent = f"order-{uuid.uuid4().hex[:12]}"
    status, reply, response = await echo(front, http, "metadata?", **{"X-Request-Id": sent})
    assert status == 200, reply
    assert response.headers["X-Request-Id"] == sent
    assert upstream_saw(reply)["x-request-id"] == sent

    def logged() -> bool:  # the mesh's access log line of the call upstream, written while the edge served it
        return any(
            json.loads(line).get("request_id") == sent for line in front.edge.output().splitlines() if line[:1] == "{"
        )

    wait_until(logged, WAIT_S, "a log line of the edge with the request id")


@pytest.mark.parametrize(
    "sent", [None, "", "has space", "x" * 129, "naïve"], ids=["none", "empty", "space", "long", "utf8"]
)
async def test_without_a_sane_request_id_the_edge_makes_one_and_sends_it_on(front: Front, http, sent) -> None:
    headers = {} if sent is None else {"X-Request-Id": sent}
    status, reply, response = await echo(front, http, "metadata?", **headers)
    assert status == 200, reply
    made = response.headers["X-Request-Id"]
    assert UUID.match(made), made
    assert upstream_saw(reply)["x-request-id"] == made


async def test_the_edges_own_refusals_carry_a_request_id_too(front: Front, http) -> None:
    async with http.get(front.url + "/v1/nothing/here", headers={"X-Request-Id": "lost-1"}) as response:
        assert response.status == 404
        assert response.headers["X-Request-Id"] == "lost-1"
    async with http.get(front.url + "/v1/nothing/here") as first, http.get(front.url + "/v1/nothing/here") as second:
        assert UUID.match(first.headers["X-Request-Id"])
        assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


# ------------------------------------------------------------------------------------------ forward_headers


async def test_only_the_configured_headers_go_upstream_as_metadata(front: Front, http) -> None:
    status, reply, _ = await echo(front, http, "metadata?", **{"X-Tenant": "acme", "X-Secret": "s3cret"})
    assert status == 200, reply
    saw = upstream_saw(reply)
    assert saw["x-tenant"] == "acme"
    assert "x-secret" not in saw


@pytest.mark.parametrize("header", ["Connection", "grpc-timeout", "x-meshlet-caller", ":authority", "traceparent"])
def test_a_header_that_may_never_be_forwarded_exits_2_naming_the_field(
    procs: Processes, tmp_path: Path, header: str
) -> None:
    descriptors = write_descriptor_set(tmp_path / "echo.pb", echo_pb2.DESCRIPTOR)
    edge = {"services": {"meshlet_api.echo.v1.Echo": "echo"}, "descriptor_sets": [str(descriptors)]}
    config = {"tls": {"source": "off"}, "edge": {**edge, "forward_headers": ["x-tenant", header]}}
    child, _ = start_edge(procs, tmp_path, config, name="edge-bad-forward")
    assert child.wait(START_S) == 2
    output = child.output()
    assert "edge.forward_headers[1]" in output
    assert header in output
    assert "remove it" in output
    assert "Traceback" not in output


# ------------------------------------------------------------------------------------------ Retry-After


async def test_a_pushback_becomes_retry_after_in_whole_seconds_rounded_up(front: Front, http) -> None:
    headers = {"x-echo-fail": "RESOURCE_EXHAUSTED", "x-echo-pushback-ms": "1500"}
    status, body, response = await echo(front, http, "slow down", **headers)
    assert status == 429, body
    assert body["code"] == 8
    assert response.headers["Retry-After"] == "2"


async def test_a_retry_info_becomes_retry_after(front: Front, http) -> None:
    headers = {"x-echo-fail": "UNAVAILABLE", "x-echo-retry-delay-ms": "2001"}
    status, body, response = await echo(front, http, "come back", **headers)
    assert status == 503, body
    assert response.headers["Retry-After"] == "3"
    assert [d["retryDelay"] for d in body["details"] if d["@type"] == RETRY_INFO] == ["2.001s"]


async def test_an_error_without_a_pushback_has_no_retry_after(front: Front, http) -> None:
    status, body, response = await echo(front, http, "broken", **{"x-echo-fail": "INTERNAL"})
    assert status == 500, body
    assert "Retry-After" not in response.headers


# ------------------------------------------------------------------------------------------ compression


def payload_request(size: int, message: str = "big") -> bytes:
    return json.dumps({"message": message, "payload": base64.b64encode(b"tea " * (size // 4)).decode()}).encode()


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("gzip", "gzip"),
        ("gzip;q=0, identity", None),
        ("*;q=0.5, br;q=0", "gzip"),
        ("identity", None),
        ("deflate", None),
    ],
)
async def test_a_large_answer_is_gzipped_as_accept_encoding_allows(front: Front, http, accept, coding) -> None:
    status, body, response = await post(http, front.url + ECHO, payload_request(4096), {"Accept-Encoding": accept})
    assert status == 200
    assert response.headers.get("Content-Encoding") == coding
    assert "Accept-Encoding" in response.headers["Vary"]
    plain = gzip.decompress(body) if coding == "gzip" else body
    assert json.loads(plain)["message"] == "big"
    if coding:
        assert len(body) < len(plain)


async def test_an_answer_under_min_bytes_is_not_compressed(front: Front, http) -> None:
    status, body, response = await post(http, front.url + ECHO, b'{"message": "small"}', {"Accept-Encoding": "gzip"})
    assert status == 200
    assert "Content-Encoding" not in response.headers
    assert json.loads(body)["message"] == "small"


async def test_brotli_is_preferred_where_the_package_is_installed(front: Front, http) -> None:
    brotli = pytest.importorskip("brotli")
    status, body, response = await post(http, front.url + ECHO, payload_request(4096), {"Accept-Encoding": "gzip, br"})
    assert status == 200
    assert response.headers["Content-Encoding"] == "br"
    assert json.loads(brotli.decompress(body))["message"] == "big"


async def test_a_gzip_request_body_is_inflated(front: Front, http) -> None:
    body = gzip.compress(payload_request(8192, "zipped"))
    status, answer, _ = await post(http, front.url + ECHO, body, {"Content-Encoding": "gzip"})
    assert status == 200, answer
    assert json.loads(answer)["message"] == "zipped"


async def test_a_compression_bomb_is_a_413_and_the_edge_serves_on(front: Front, http) -> None:
    bomb = gzip.compress(b'{"message": "' + b"a" * (32 * 1024 * 1024) + b'"}', compresslevel=9)
    assert len(bomb) < MAX_BODY  # it passes the limit only once inflated
    status, answer, _ = await post(http, front.url + ECHO, bomb, {"Content-Encoding": "gzip"})
    assert status == 413, answer
    refusal = json.loads(answer)
    assert refusal["code"] == 8
    assert "decompressed" in refusal["message"]
    status, reply, _ = await echo(front, http, "still here")
    assert status == 200
    assert reply["message"] == "still here"


@pytest.mark.parametrize(
    ("headers", "body", "expected", "field"),
    [
        ({"Content-Encoding": "gzip"}, b"\x1f\x8b\x08\x00 not gzip at all", 400, "body"),
        ({"Content-Encoding": "gzip"}, gzip.compress(b'{"message": "cut short"}')[:-12], 400, "body"),
        ({"Content-Encoding": "br"}, b'{"message": "x"}', 415, "Content-Encoding"),
        ({"Content-Type": "text/plain"}, b'{"message": "x"}', 415, "Content-Type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"message=x", 415, "Content-Type"),
    ],
    ids=["corrupt-gzip", "truncated-gzip", "brotli-body", "text-plain", "form"],
)
async def test_a_body_the_edge_cannot_read_is_refused_in_the_one_shape(
    front: Front, http, headers, body, expected, field
) -> None:
    status, answer, response = await post(http, front.url + ECHO, body, headers)
    assert status == expected, answer
    refusal = json.loads(answer)
    assert refusal["code"] == 3
    violations = next(d for d in refusal["details"] if d["@type"].endswith("BadRequest"))["fieldViolations"]
    assert violations[0]["field"] == field
    if field == "Content-Encoding":
        assert response.headers["Accept-Encoding"] == "gzip"


@pytest.mark.parametrize(
    "content_type", [None, "application/json; charset=utf-8", "application/merge-patch+json", "APPLICATION/JSON"]
)
async def test_json_in_its_spellings_and_a_body_without_content_type_are_read(front: Front, http, content_type) -> None:
    status, answer, _ = await post(http, front.url + ECHO, b'{"message": "typed"}', {"Content-Type": content_type})
    assert status == 200, answer
    assert json.loads(answer)["message"] == "typed"


async def test_a_body_over_edge_max_body_bytes_is_a_413(front: Front, http) -> None:
    status, answer, _ = await post(http, front.url + ECHO, payload_request(MAX_BODY))
    assert status == 413, answer
    assert json.loads(answer)["code"] == 8


async def test_the_upstream_receives_gzip_compressed_messages(front: Front, http) -> None:
    status, _, _ = await post(http, front.url + ECHO, payload_request(2048, "on the wire"))
    assert status == 200
    calls = [call for call in front.sniffer.calls() if call.path == ECHO]
    assert calls, "the relay saw no Echo call"
    assert {call.grpc_encoding for call in calls} == {"gzip"}
    assert any(call.compressed for call in calls), calls
