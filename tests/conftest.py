"""Session-wide fixtures: a process runner that always reaps its children."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
