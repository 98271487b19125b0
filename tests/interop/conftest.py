"""Interop fixtures: clients that are not ours. ``grpc_js`` installs the pinned @grpc/grpc-js client of
tests/interop/grpc_js/ with ``npm ci`` into pytest's cache (once per lock file, reused across runs) and runs it.

Node and npm are the test's only outside needs: where either is missing, the tests that need them skip, saying so
(CI installs both with apt). A failing install is a failure, with npm's own output."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import REPO_ROOT

CLIENT_DIR = Path(__file__).parent / "grpc_js"
PROTO_ROOT = REPO_ROOT / "protos"
INSTALL_S = 300.0  # bounds on a step that must finish, never timing assertions
RUN_S = 90.0


@dataclass(frozen=True)
class NodeClient:
    """client.js with its node_modules: `run(target)` makes its calls to `target` and returns what it printed."""

    node: str
    node_modules: Path

    def run(self, target: str) -> dict[str, Any]:
        done = subprocess.run(
            [self.node, str(CLIENT_DIR / "client.js"), target, str(PROTO_ROOT)],
            capture_output=True,
            text=True,
            timeout=RUN_S,
            env={**os.environ, "NODE_PATH": str(self.node_modules)},
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"client.js exited {done.returncode}:\n{done.stderr}")
        results: dict[str, Any] = json.loads(done.stdout)
        return results

    def __repr__(self) -> str:
        return f"<NodeClient {self.node} with {self.node_modules}>"


def _install(cache: Path, npm: str) -> Path:
    """``npm ci`` into `cache`, keyed by the lock file, so that a changed pin installs afresh."""
    lock = (CLIENT_DIR / "package-lock.json").read_bytes()
    folder = cache / hashlib.sha256(lock).hexdigest()[:16]
    stamp = folder / ".installed"
    if stamp.exists():
        return folder / "node_modules"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(CLIENT_DIR / name, folder / name)
    # --ignore-scripts: the only install script (protobufjs's) checks versions; nothing needs building.
    done = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=INSTALL_S,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"npm ci in {folder} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    stamp.touch()
    return folder / "node_modules"


@pytest.fixture(scope="session")
def grpc_js(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> NodeClient:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"{'node' if node is None else 'npm'} is not on PATH (CI installs nodejs and npm with apt)")
    cache_provider = getattr(request.config, "cache", None)
    cache = cache_provider.mkdir("grpc_js") if cache_provider is not None else tmp_path_factory.mktemp("grpc_js")
    return NodeClient(node, _install(Path(cache), npm))
