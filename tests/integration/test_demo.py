"""`meshlet demo`, the README's main command, runs to its verdict and leaves no process behind."""

from __future__ import annotations

import pytest

from tests.support.processes import Processes, meshlet_argv

pytestmark = pytest.mark.slow


def test_the_demo_shows_a_service_registering_turning_healthy_and_being_discovered(procs: Processes) -> None:
    demo = procs.start(meshlet_argv("demo"), name="demo")

    assert demo.wait(60) == 0, demo.output()
    output = demo.output()
    for step in ("dev agent", "registered echo-1", "discovered echo-1", "through mesh.channel", "demo finished"):
        assert step in output, f"{step!r} missing from the demo's output:\n{output}"
