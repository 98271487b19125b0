"""What `pip install meshlet` puts on a user's machine: only meshlet-owned packages, and a build that says nothing
about deprecated metadata.

The wheel is built from the files the image copies (Dockerfile), in a scratch folder so the worktree gets no
build/ or egg-info, by pip with build isolation: the setuptools that pyproject's build-system asks for.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "sdk", "sidecar", "protos", "services")
MESHLET_PACKAGES = {"meshlet", "meshlet_sidecar", "meshlet_edge", "meshlet_api", "meshlet_shop", "meshlet_shop_api"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, str]:
    """The wheel, and everything the build printed."""
    scratch = tmp_path_factory.mktemp("wheel")
    source, out = scratch / "src", scratch / "out"
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif path.exists():  # a missing file (LICENSE) is the build's to complain about
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--verbose", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    output = build.stdout + build.stderr
    assert build.returncode == 0, output[-4000:]
    (wheel,) = out.glob("meshlet-*.whl")
    return zipfile.ZipFile(wheel), output


@pytest.mark.slow
def test_the_wheel_installs_only_meshlet_owned_packages(built: tuple[zipfile.ZipFile, str]) -> None:
    wheel, _ = built
    top_level = {name.split("/")[0] for name in wheel.namelist() if ".dist-info/" not in name}
    assert top_level == MESHLET_PACKAGES, f"the wheel would install {sorted(top_level - MESHLET_PACKAGES)}"
    (listed,) = (name for name in wheel.namelist() if name.endswith(".dist-info/top_level.txt"))
    assert set(wheel.read(listed).decode().split()) == MESHLET_PACKAGES


@pytest.mark.slow
def test_the_license_is_an_spdx_expression_and_the_build_warns_of_nothing(built: tuple[zipfile.ZipFile, str]) -> None:
    wheel, output = built
    deprecations = [line.strip() for line in output.splitlines() if "deprecat" in line.lower()]
    assert not deprecations, "the build warns a new user:\n" + "\n".join(deprecations)
    (metadata,) = (name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
    headers = wheel.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: Apache-2.0" in headers
    assert "License-File: LICENSE" in headers
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel.namelist())
