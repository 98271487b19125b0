"""Session-wide fixtures: a process runner that always reaps its children."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Processes, processes


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Start child processes; every one is stopped when the test ends, pass or fail."""
    with processes(tmp_path) as p:
        yield p
