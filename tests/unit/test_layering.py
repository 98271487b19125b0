"""The layout's rules that import-linter cannot see: pure modules import no I/O library (standard-library
ones included), and the dev agent imports nothing of meshlet outside itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parents[2] / "sdk"
SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"

# Modules and packages that decide without doing I/O: they take a clock and an rng and return values.
PURE = [
    "meshlet/balance",
    "meshlet/resilience",
    "meshlet/security/identity.py",
    "meshlet/security/intentions.py",
    "meshlet/call.py",
    "meshlet/deadline.py",
    "meshlet/endpoints.py",
    "meshlet/events.py",
    "meshlet/pipeline.py",
    "meshlet/devagent/decode.py",
    "meshlet/devagent/raft.py",
    "meshlet/devagent/catalog.py",
    "meshlet/devagent/catalog_records.py",
    "meshlet/devagent/catalog_tables.py",
    "meshlet/devagent/check_timers.py",
    "meshlet/devagent/kv.py",
    "meshlet/devagent/intentions.py",
    "meshlet/devagent/filtering.py",
    "meshlet/demo/topology.py",
    "meshlet/demo/script.py",
    "meshlet/demo/stats.py",
    "meshlet/demo/scrape.py",
    "meshlet/demo/timeline.py",
    "meshlet/demo/report.py",
]
IO_LIBRARIES = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "subprocess",
    "grpc",
    "consul",
    "aiohttp",
    "requests",
    "urllib",
}


def _files(relative: str) -> Iterator[Path]:
    path = SDK / relative
    if path.is_dir():
        yield from sorted(path.rglob("*.py"))
    elif path.exists():
        yield path


def _imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


@pytest.mark.parametrize("relative", PURE)
def test_pure_modules_import_no_io_library(relative: str) -> None:
    offences = [
        f"{path.relative_to(SDK)}:{line} imports {module}"
        for path in _files(relative)
        for line, module in _imported_modules(path)
        if module.split(".")[0] in IO_LIBRARIES
    ]
    assert not offences, "pure code must take its I/O as a parameter:\n" + "\n".join(offences)


def test_dev_agent_is_an_island() -> None:
    offences = [
        f"{path.relative_to(SDK)}:{line} imports {module}"
        for path in _files("meshlet/devagent")
        for line, module in _imported_modules(path)
        if module.split(".")[0] in ("meshlet", "meshlet_sidecar") and not module.startswith("meshlet.devagent")
    ]
    assert not offences, "the dev agent must import nothing of meshlet outside itself:\n" + "\n".join(offences)


def test_import_linter_contracts_hold() -> None:
    """The layer contracts in pyproject.toml (faces -> pipelines -> mechanisms -> vocabulary)."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], capture_output=True, text=True, cwd=SDK.parent, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
