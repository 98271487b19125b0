"""A real redis-server for tests (Debian's ``redis-server`` package), on a free port of loopback (or of the test's
pod network's node address), with nothing written to disk; stopped with the test's other processes."""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass

import pytest

from tests.support.processes import Child, Processes, free_port, wait_until

START_S = 10.0


@dataclass(frozen=True)
class RedisServer:
    child: Child
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(procs: Processes, host: str = "127.0.0.1", port: int | None = None) -> RedisServer:
    """redis-server on `host` (skips the test, saying how to install it, when the binary is missing); on `port`
    when given (a Redis restarted where its clients expect it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server): the Redis store is untested")
    port = port or free_port(host)
    argv = [binary, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no", "--protected-mode", "no"]
    argv += ["--dir", str(procs.log_dir)]  # nothing is saved; should anything be, it lands beside the logs
    child = procs.start(argv, name="redis")
    wait_until(lambda: _answers_ping(host, port) or not child.alive(), START_S, f"redis-server on {host}:{port}")
    assert child.alive(), child.output()
    return RedisServer(child, host, port)
