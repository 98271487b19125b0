"""`meshlet demo`, the README's main command: the whole mesh comes up, the faults are masked, the verdict is printed,
and no process it started outlives it, whether it ends by itself or by Ctrl-C.

Every child inherits the demo's environment, so a marker variable given to the demo finds them all in /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis

from tests.support.processes import Child, Processes, wait_until
from tests.support.redis_server import start_redis

pytestmark = pytest.mark.slow

MARKER = "DEMO_TEST_MARKER"  # not MESHLET_*: the demo keeps those from its children
RUN_S = 120  # a bound on a run of a few seconds of traffic on a busy machine, not a timing assertion


def processes_marked(marker: str) -> list[str]:
    """The command lines of the live processes whose environment holds `marker`."""
    return list(_marked(marker).values())


def _marked(marker: str) -> dict[int, str]:
    found = {}
    needle = f"{MARKER}={marker}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def kill_marked(marker: str) -> None:
    """What a failed test leaves of the demo's children: they are in sessions of their own, out of procs' reach."""
    for pid in _marked(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# A shell without job control starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT
# ignored (so does the demo, rightly): the demo gets Ctrl-C back whatever started pytest.
WITH_CTRL_C = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('meshlet.cli', run_name='__main__', alter_sys=True)"
)


def start_demo(procs: Processes, *args: str, env: dict[str, str] | None = None) -> tuple[str, Child]:
    """Start the demo with a marker its children inherit; TMPDIR keeps the run's folder in the test's own."""
    marker = uuid.uuid4().hex
    env = {**(env or {}), MARKER: marker, "COLUMNS": "120", "TMPDIR": str(procs.log_dir)}
    return marker, procs.start([sys.executable, "-c", WITH_CTRL_C, "demo", *args], name="demo", env=env)


def test_the_demo_masks_the_faults_reports_a_passing_verdict_and_leaves_nothing_behind(procs: Processes) -> None:
    marker, demo = start_demo(procs, "--duration", "10", "--rate", "15")

    code = demo.wait(RUN_S)
    output = demo.output()

    assert code == 0, output
    assert "verdict: PASS" in output, output
    for shown in ("shop-client → gateway", "orders → inventory", "inventory-2 killed", "p99"):
        assert shown in output, f"{shown!r} missing from the report:\n{output}"
    assert processes_marked(marker) == []


def test_ctrl_c_mid_run_stops_every_process_the_demo_started(procs: Processes) -> None:
    marker, demo = start_demo(procs, "--duration", "60", "--rate", "10")
    wait_until(
        lambda: "The mesh on this machine" in demo.output() or not demo.alive(), RUN_S, "the demo to bring the mesh up"
    )
    assert len(processes_marked(marker)) > 10, demo.output()  # the demo, Consul, 4 apps, 4 sidecars, 2 SDK services

    demo.signal(signal.SIGINT)

    assert demo.wait(RUN_S) == 130, demo.output()
    assert "interrupted" in demo.output()
    assert processes_marked(marker) == []


def test_a_killed_demo_takes_its_children_with_it(procs: Processes) -> None:
    """SIGKILL runs none of the demo's own clean-up: the kernel tells each child that its parent died."""
    marker, demo = start_demo(procs, "--duration", "60", "--rate", "10")
    wait_until(
        lambda: "The mesh on this machine" in demo.output() or not demo.alive(), RUN_S, "the demo to bring the mesh up"
    )
    try:
        assert len(processes_marked(marker)) > 10, demo.output()

        demo.signal(signal.SIGKILL)

        wait_until(lambda: not processes_marked(marker), RUN_S, "every child of the killed demo to stop")
    finally:
        kill_marked(marker)


def test_keep_running_prints_the_edges_url_and_a_curl_line_that_checks_out_over_http(procs: Processes) -> None:
    """The report has a row for the HTTP callers; the printed curl line, sent as written, answers a 200 order."""
    marker, demo = start_demo(procs, "--duration", "6", "--rate", "12", "--no-faults", "--keep-running")
    try:
        wait_until(lambda: "curl " in demo.output() or not demo.alive(), RUN_S, "the demo to print its addresses")
        output = demo.output()
        assert "HTTP/JSON callers through meshlet-edge" in output, output
        assert "POST /v1/checkout" in output, output
        edge = re.search(r"^edge: (http://127\.0\.0\.1:\d+)$", output, re.MULTILINE)
        assert edge is not None, output
        curl = next(line for line in output.splitlines() if line.strip().startswith("curl "))
        method, url, headers, body = parse_curl(curl)
        assert url.startswith(edge.group(1) + "/"), curl

        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            assert response.headers.get_content_type() == "application/json"
            order = json.load(response)
        assert order["orderId"], order
        with urllib.request.urlopen(f"{edge.group(1)}/v1/orders/{order['orderId']}", timeout=30) as response:
            assert json.load(response)["orderId"] == order["orderId"]

        demo.signal(signal.SIGINT)
        assert demo.wait(RUN_S) == 130, demo.output()
        assert processes_marked(marker) == []
    finally:
        kill_marked(marker)


def test_with_redis_url_the_demos_edge_keeps_its_limits_and_cache_in_that_redis(procs: Processes) -> None:
    """REDIS_URL (a real redis-server): the report says the cache is there and that stock reads hit it; while the
    mesh stays up, a read through the edge leaves the consumer's counters and the cached item in that Redis."""
    redis_server = start_redis(procs)
    env = {"REDIS_URL": redis_server.url}
    marker, demo = start_demo(procs, "--duration", "6", "--rate", "12", "--no-faults", "--keep-running", env=env)
    client = redis.Redis.from_url(redis_server.url)
    try:
        wait_until(lambda: "curl " in demo.output() or not demo.alive(), RUN_S, "the demo to print its addresses")
        output = demo.output()
        report = " ".join(output.split())  # the table's caption wraps
        assert f"in Redis at {redis_server.url}" in report, output
        hits = re.search(r"(\d+) of (\d+) stock reads were hits", report)
        assert hits is not None, output
        assert int(hits.group(1)) >= 1, "visits read each item about once a second; it is cached for 2 s"
        edge = re.search(r"^edge: (http://127\.0\.0\.1:\d+)$", output, re.MULTILINE)
        assert edge is not None, output

        def read_leaves_its_traces_in_redis() -> bool:
            with urllib.request.urlopen(f"{edge.group(1)}/v2/inventory/items/sku-tea", timeout=30) as response:
                assert response.status == 200
                assert response.headers["RateLimit-Limit"], "the default plan answered"
                assert response.headers["Cache-Status"].startswith("meshlet-edge;")
            keys = {key.decode() for key in client.scan_iter("meshlet:edge:*")}
            return any(k.startswith("meshlet:edge:limit:") for k in keys) and any(
                k.startswith("meshlet:edge:cache:") for k in keys
            )

        wait_until(read_leaves_its_traces_in_redis, RUN_S, "the edge's counters and cache entry in REDIS_URL's Redis")

        demo.signal(signal.SIGINT)
        assert demo.wait(RUN_S) == 130, demo.output()
        assert processes_marked(marker) == []
    finally:
        client.close()
        kill_marked(marker)


def parse_curl(line: str) -> tuple[str, str, dict[str, str], bytes | None]:
    """Method, URL, headers and body of a ``curl`` command line as the demo prints it."""
    words = shlex.split(line)
    method, url, headers, body = "GET", "", {}, None
    rest = iter(words[1:])
    for word in rest:
        if word == "-X":
            method = next(rest)
        elif word == "-H":
            name, _, value = next(rest).partition(":")
            headers[name.strip()] = value.strip()
        elif word in ("-d", "--data"):
            body = next(rest).encode()
        elif not word.startswith("-"):
            url = word
    return method, url, headers, body
