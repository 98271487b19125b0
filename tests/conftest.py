"""Session-wide fixtures: a process runner that always reaps its children."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The shared checks in tests/support assert as tests do: pytest must rewrite them to show what differed.
pytest.register_assert_rewrite("tests.support")

from tests.support.processes import Processes, processes  # noqa: E402


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Start child processes; every one is stopped when the test ends, pass or fail."""
    with processes(tmp_path) as p:
        yield p


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say once, not once per test, why the real-Consul half of the contract suite did not run."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = {str(report.longrepr[2]) for report in skipped if isinstance(report.longrepr, tuple)}
    for reason in sorted(reasons):
        count = sum(1 for r in skipped if isinstance(r.longrepr, tuple) and str(r.longrepr[2]) == reason)
        terminalreporter.write_line(f"skipped {count}: {reason}")


# ------------------------------------------------------------------------------------------ event loop
# MESHLET_TEST_LOOP=uvloop runs every asyncio test and async fixture on uvloop (`make test` runs the pipeline and
# sidecar suites a second time so); unset or asyncio keeps asyncio's own loop. pytest-asyncio's loop-factory hook
# is its supported way to choose (overriding event_loop_policy is deprecated). The processes the tests start
# choose their own loop from MESHLET_LOOP.
TEST_LOOP = os.environ.get("MESHLET_TEST_LOOP", "asyncio")
if TEST_LOOP not in ("asyncio", "uvloop"):
    raise pytest.UsageError(f"MESHLET_TEST_LOOP={TEST_LOOP!r}: expected asyncio or uvloop")

if TEST_LOOP == "uvloop":
    import uvloop

    def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
        return {"uvloop": uvloop.new_event_loop}
