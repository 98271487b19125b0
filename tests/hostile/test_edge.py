"""meshlet-edge's HTTP port under hostile requests (beside the slowloris, the limits, and the garbage that every HTTP
face gets): JSON bombs answered 400 or 413 in the one error shape, never a 500; a gzip bomb refused with a 413
without the edge inflating it; bodies that stall, answered 408 and cut off; hostile Host headers."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from meshlet.http_limits import MAX_BODY_BYTES
from meshlet_edge.bodies import READ_IDLE_S
from tests.hostile.attacks import HOST, connect, drain, hang_up
from tests.hostile.conftest import CALL_TIMEOUT_S, ECHO_METHOD, Face, Hostile

STALLED = 20  # connections that send half a body and then nothing
STALL_BOUND_S = READ_IDLE_S + 20  # a bound on waiting for the edge's answer, not a timing


def send(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=body, method="POST")
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S * 4) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        body = error.read()
        assert "code" in json.loads(body), body  # the one error shape, whatever the refusal
        return int(error.code)
    except (urllib.error.URLError, ConnectionError) as error:
        return -1 if "reset" in str(error).lower() or "broken pipe" in str(error).lower() else 0


BOMBS = {
    "200,000 nested arrays": (b'{"message": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", {400}),
    "100,000 nested objects": (b'{"message": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}", {400}),
    "a 900,000-digit number": (b'{"message": "m", "payload": ' + b"9" * 900_000 + b"}", {400}),
    "1e999999 as a string field": (b'{"message": 1e999999}', {400}),
    "a 1,000,000-character message": (b'{"message": "' + b"n" * 1_000_000 + b'"}', {200}),
    "a 2 MiB body": (b'{"message": "' + b"n" * 2 * MAX_BODY_BYTES + b'"}', {413, -1}),
    "10,000 unknown fields": (json.dumps({f"k{i}": "v" for i in range(10_000)}).encode(), {400}),
}


def test_json_bombs(faces: dict[str, Face]) -> None:
    face = faces["edge HTTP"]
    url = f"http://127.0.0.1:{face.port}{ECHO_METHOD}"
    statuses: dict[str, int] = {}
    with Hostile(face, "JSON bombs: nesting, huge numbers, huge strings (x5 each)") as run:
        for what, (body, _) in BOMBS.items():
            for _ in range(5):
                statuses[what] = send(url, body)
        run.note = "; ".join(f"{what}: {status}" for what, status in statuses.items())
    for what, (_, expected) in BOMBS.items():
        assert statuses[what] in expected, f"{what} was answered {statuses[what]}, not {expected}"


def gzip_of_zeros(size: int) -> bytes:
    """`size` zeros inside a JSON string, gzipped, about a thousandth of its size on the wire: one gzip member
    per MiB (RFC 1952 allows several, and every reader inflates them all), so it is made at once."""
    mib = gzip.compress(b"0" * (1 << 20), compresslevel=9)
    return gzip.compress(b'{"message": "') + mib * (size >> 20) + gzip.compress(b'"}')


def test_gzip_bomb(faces: dict[str, Face]) -> None:
    face = faces["edge HTTP"]
    url = f"http://127.0.0.1:{face.port}{ECHO_METHOD}"
    bomb = gzip_of_zeros(512 << 20)
    assert len(bomb) < MAX_BODY_BYTES
    with Hostile(face, f"gzip bomb: 512 MiB in {len(bomb) >> 10} KiB (x10)") as run:
        statuses = [send(url, bomb, {"Content-Encoding": "gzip"}) for _ in range(10)]
        run.note = f"answered {sorted(set(statuses))}"
    assert set(statuses) == {413}


def stall(port: int) -> str:
    """Send headers and half of the declared body, then nothing: the status line the edge answers, or EOF."""
    sock = connect(port)
    try:
        sock.sendall(
            f"POST {ECHO_METHOD} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n".encode()
            + b'{"message": "'
        )
        answer = drain(sock, STALL_BOUND_S)
    finally:
        hang_up(sock)
    return answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed without an answer"


@pytest.mark.slow
def test_stalled_bodies(faces: dict[str, Face]) -> None:
    face = faces["edge HTTP"]
    with Hostile(face, f"stalled bodies ({STALLED} connections sending half a body)") as run:
        with ThreadPoolExecutor(STALLED) as pool:
            answers = list(pool.map(lambda _: stall(face.port), range(STALLED)))
        run.note = f"answered {sorted(set(answers))} (idle timeout {READ_IDLE_S:g} s)"
    assert set(answers) == {"HTTP/1.1 408 Request Timeout"}


def raw_post(port: int, host_lines: bytes) -> str:
    body = b'{"message": "hello"}'
    sock = connect(port)
    try:
        sock.sendall(
            f"POST {ECHO_METHOD} HTTP/1.1\r\n".encode()
            + host_lines
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        answer = drain(sock, CALL_TIMEOUT_S)
    finally:
        hang_up(sock)
    return answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed without an answer"


HOSTS = {
    "no Host": b"",
    "two Hosts": b"Host: a.example\r\nHost: b.example\r\n",
    "an 8,000-byte Host": b"Host: " + b"h" * 8000 + b"\r\n",
    "a Latin-1 Host": "Host: ünïcödé.example\r\n".encode("latin-1"),
    "a UTF-8 Host": "Host: 例え.テスト\r\n".encode(),
    "a Host with NUL": b"Host: evil\x00.example\r\n",
    "a port past 65535": b"Host: evil.example:99999\r\n",
    "an empty Host": b"Host: \r\n",
    "a URL as Host": b"Host: http://evil.example/path?q=1\r\n",
}


def test_hostile_host_headers(faces: dict[str, Face]) -> None:
    face = faces["edge HTTP"]
    answers: dict[str, str] = {}
    with Hostile(face, "hostile Host headers (x10 each)") as run:
        for what, lines in HOSTS.items():
            for _ in range(10):
                answers[what] = raw_post(face.port, lines)
        run.note = "; ".join(f"{what}: {answer}" for what, answer in answers.items())
    for what, answer in answers.items():
        assert answer.split(" ")[1:2] in (["200"], ["400"]), f"{what}: {answer}"  # served, or refused by aiohttp


def test_the_edge_port_refuses_an_upgrade_it_does_not_speak(faces: dict[str, Face]) -> None:
    face = faces["edge HTTP"]
    with Hostile(face, "h2c upgrade and CONNECT requests (x10 each)") as run:
        answers = set()
        for request in (
            f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        ):
            for _ in range(10):
                sock = connect(face.port)
                try:
                    sock.sendall(request.encode())
                    answers.add(drain(sock).split(b"\r\n", 1)[0].decode(errors="replace"))
                except OSError:
                    answers.add("hung up")
                finally:
                    hang_up(sock)
        run.note = f"answered {sorted(answers)}"
    assert not any(" 200 " in answer or " 500 " in answer for answer in answers), answers
