"""The sidecar pods' preStop hook (k8s/base/shop/drain_hook.py), run as the kubelet runs it, against a stand-in
agent that records what it is asked: Consul's maintenance call for the instance id the sidecar registers."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.k8s.manifests import K8S
from tests.support.processes import free_port

HOOK = K8S / "base" / "shop" / "drain_hook.py"


class Recorder(BaseHTTPRequestHandler):
    requests: list[tuple[str, str]] = []

    def do_PUT(self) -> None:
        self.requests.append(("PUT", self.path))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def agent() -> Iterator[str]:
    Recorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_hook(consul: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"CONSUL_HTTP_ADDR": consul, "POD_IP": "10.244.1.7", "DRAIN_NOTICE_S": "0"}
    return subprocess.run(
        [sys.executable, str(HOOK), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_it_puts_the_sidecars_instance_into_maintenance(agent: str) -> None:
    done = run_hook(agent, "inventory", "15006")
    assert done.returncode == 0, done.stderr
    [(method, path)] = Recorder.requests
    url = urlsplit(path)
    assert method == "PUT"
    # The id the sidecar registers: <service>-<address>-<port> (meshlet_sidecar/sidecar.py).
    assert url.path == "/v1/agent/service/maintenance/inventory-10.244.1.7-15006"
    assert parse_qs(url.query)["enable"] == ["true"]
    assert "in maintenance" in done.stderr


def test_an_unreachable_agent_never_fails_the_hook() -> None:
    done = run_hook(f"127.0.0.1:{free_port()}", "payments")
    assert done.returncode == 0
    assert "stopping anyway" in done.stderr
