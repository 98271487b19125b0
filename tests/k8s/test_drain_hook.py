"""The sidecar pods' preStop hook (k8s/base/shop/drain_hook.py), run as the kubelet runs it, against a stand-in
for the sidecar's admin port that records what it is asked: ``POST /drain`` on loopback. What the sidecar then
does (maintenance, and its end once the app restarts) is replayed with real pods in test_topology.py."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.k8s.manifests import K8S
from tests.support.processes import free_port

HOOK = K8S / "base" / "shop" / "drain_hook.py"


class Recorder(BaseHTTPRequestHandler):
    requests: list[tuple[str, str]] = []

    def do_POST(self) -> None:
        self.requests.append(("POST", self.path))
        body = b"in maintenance: callers stop picking this instance until the app is back\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def admin_port() -> Iterator[int]:
    Recorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def run_hook(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"DRAIN_NOTICE_S": "0"}  # no CONSUL_HTTP_ADDR, POD_IP or token: the sidecar owns the instance
    return subprocess.run(
        [sys.executable, str(HOOK), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_it_asks_the_sidecar_in_its_pod_to_drain(admin_port: int) -> None:
    done = run_hook(str(admin_port))
    assert done.returncode == 0, done.stderr
    assert Recorder.requests == [("POST", "/drain")]
    assert "in maintenance" in done.stderr


def test_a_sidecar_that_does_not_answer_never_fails_the_hook() -> None:
    done = run_hook(str(free_port()))
    assert done.returncode == 0
    assert "stopping anyway" in done.stderr
