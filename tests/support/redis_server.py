"""A real redis-server for tests (Debian's ``redis-server`` package), on a free loopback port, with nothing
written to disk; stopped with the test's other processes."""

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
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(procs: Processes) -> RedisServer:
    """redis-server on 127.0.0.1 (skips the test, saying how to install it, when the binary is missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server): the Redis store is untested")
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(procs.log_dir)]  # nothing is saved; should anything be, it lands beside the logs
    child = procs.start(argv, name="redis")
    wait_until(lambda: _answers_ping(port) or not child.alive(), START_S, f"redis-server on {port}")
    assert child.alive(), child.output()
    return RedisServer(child, port)
