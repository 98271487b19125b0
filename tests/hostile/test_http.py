"""The HTTP ports (the sidecar's admin, the SDK's metrics, the dev agent's API): slowloris, and requests past
the limits in meshlet.http_limits (a long request line, too many or too long headers, a body too big)."""

from __future__ import annotations

import socket
import time

import pytest

from meshlet.http_limits import HEADER_TIMEOUT_S, MAX_BODY_BYTES
from tests.hostile.attacks import HOST, connect, drain, hang_up
from tests.hostile.conftest import HTTP_FACES, Face, Hostile
from tests.support.processes import wait_until

SLOW_CONNECTIONS = 200
TRICKLE_S = 3.0
DROP_BOUND_S = 30.0  # a bound on waiting for the server to drop them (HEADER_TIMEOUT_S and then some), not a timing


def hung_up(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("name", HTTP_FACES)
def test_slowloris(faces: dict[str, Face], name: str) -> None:
    """200 connections trickle a request's headers a byte at a time: the port keeps serving, and closes each
    of them once HEADER_TIMEOUT_S has passed without complete headers."""
    face = faces[name]
    sockets = [connect(face.port) for _ in range(SLOW_CONNECTIONS)]
    try:
        with Hostile(face, f"slowloris ({SLOW_CONNECTIONS} connections trickling headers)") as run:
            for sock in sockets:
                sock.sendall(f"GET /live HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode())
            give_up = time.monotonic() + TRICKLE_S
            while time.monotonic() < give_up:
                for sock in sockets:
                    try:
                        sock.sendall(b"a")
                    except OSError:
                        pass
                time.sleep(0.5)
            wait_until(lambda: all(hung_up(sock) for sock in sockets), DROP_BOUND_S, "the server to drop slow clients")
            run.note = f"all {SLOW_CONNECTIONS} closed by the server (header timeout {HEADER_TIMEOUT_S:g} s)"
    finally:
        for sock in sockets:
            hang_up(sock)


def raw_request(port: int, request: bytes) -> str:
    """Send one raw HTTP/1.1 request; the status line the server answers, or how it hung up."""
    sock = connect(port)
    try:
        try:
            sock.sendall(request)
        except OSError as exc:
            return f"hung up while we sent ({type(exc).__name__})"
        answer = drain(sock)
    finally:
        hang_up(sock)
    return answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed without an answer"


@pytest.mark.parametrize("name", HTTP_FACES)
def test_requests_past_the_limits(faces: dict[str, Face], name: str) -> None:
    face = faces[name]
    head = f"Host: {HOST}\r\nConnection: close\r\n"
    many_headers = "".join(f"X-{i}: v\r\n" for i in range(500))
    requests = {
        "request line 100 KiB": f"GET /{'a' * 100 * 1024} HTTP/1.1\r\n{head}\r\n".encode(),
        "one 64 KiB header": f"GET /live HTTP/1.1\r\n{head}X-Big: {'v' * 64 * 1024}\r\n\r\n".encode(),
        "500 headers": f"GET /live HTTP/1.1\r\n{head}{many_headers}\r\n".encode(),
        "2 MiB body": f"PUT /v1/kv/hostile/big HTTP/1.1\r\n{head}Content-Length: {2 * MAX_BODY_BYTES}\r\n\r\n".encode()
        + b"b" * 2 * MAX_BODY_BYTES,
    }
    answers: dict[str, str] = {}
    with Hostile(face, "request line, headers and body past the limits (x25 each)") as run:
        for what, request in requests.items():
            for _ in range(25):
                answers[what] = raw_request(face.port, request)
        run.note = "; ".join(f"{what}: {answer}" for what, answer in answers.items())
    for what, answer in answers.items():
        assert " 200 " not in answer, f"{what} was served: {answer}"
        assert " 500 " not in answer, f"{what} crashed a handler: {answer}"
