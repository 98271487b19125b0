"""`meshlet demo`, the README's main command: the whole mesh comes up, the faults are masked, the verdict is printed,
and no process it started outlives it, whether it ends by itself or by Ctrl-C.

Every child inherits the demo's environment, so a marker variable given to the demo finds them all in /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.processes import Child, Processes, wait_until

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


def start_demo(procs: Processes, *args: str) -> tuple[str, Child]:
    """Start the demo with a marker its children inherit; TMPDIR keeps the run's folder in the test's own."""
    marker = uuid.uuid4().hex
    env = {MARKER: marker, "COLUMNS": "120", "TMPDIR": str(procs.log_dir)}
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
