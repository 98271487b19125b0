"""The Dockerfile, checked where it can be without a container engine: stages, user, what the final stage
installs, and that every command the image and the manifests run is one the installed project provides."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from setuptools import find_namespace_packages, find_packages  # type: ignore[import-untyped]

from tests.k8s.manifests import OVERLAYS, render, workloads
from tests.support.processes import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
LOCK = REPO_ROOT / "requirements.lock"
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|cc|build-essential|make|python3?-dev|libc6-dev)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def stages(dockerfile: Path) -> list[Stage]:
    """The Dockerfile's stages, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(words[0], name))
        elif found:
            found[-1].instructions.append((instruction, args.strip()))
    return found


def global_args() -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults (what FROM lines may use)."""
    header = DOCKERFILE.read_text().split("\nFROM", 1)[0]
    found: dict[str, str] = {}
    for line in header.splitlines():
        if line.startswith("ARG ") and "=" in line:
            key, _, value = line[4:].partition("=")
            found[key] = value
    return found


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def scripts() -> set[str]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return set(project["scripts"])


def source_roots() -> list[str]:
    """The folders the packages are found in (tool.setuptools.packages.find.where)."""
    tool = pyproject()["tool"]
    assert isinstance(tool, dict)
    listed = tool["setuptools"].get("packages")
    find = listed.get("find", {}) if isinstance(listed, dict) else {}
    return list(find.get("where", ["."]))


def packaged_modules() -> set[str]:
    """The packages setuptools puts into the wheel, found as it finds them (tool.setuptools.packages.find)."""
    tool = pyproject()["tool"]
    assert isinstance(tool, dict)
    config = tool["setuptools"]
    listed = config.get("packages")
    if isinstance(listed, list):
        return set(listed)
    find = listed["find"] if isinstance(listed, dict) else {}
    finder = find_namespace_packages if find.get("namespaces", True) else find_packages
    found: set[str] = set()
    for where in find.get("where", ["."]):
        found |= set(
            finder(
                str(REPO_ROOT / where),
                include=find.get("include", ["*"]),
                exclude=find.get("exclude", []),
            )
        )
    return found


def locked() -> dict[str, tuple[Version, list[str]]]:
    """requirements.lock as {name: (version, sha256 hashes)}; every requirement must be an exact pin."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    pins: dict[str, tuple[Version, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        pin, *options = line.split(" --")
        requirement = Requirement(pin)
        [specifier] = list(requirement.specifier)
        assert specifier.operator == "==", f"requirements.lock: {pin} is not an exact pin"
        options = [option.strip() for option in options]
        hashes = [option.removeprefix("hash=sha256:") for option in options if option.startswith("hash=sha256:")]
        pins[canonicalize_name(requirement.name)] = (Version(specifier.version), hashes)
    return pins


def test_the_lock_pins_every_dependency_with_its_hashes() -> None:
    """What the image installs is decided by requirements.lock (make lock), not by the day of the build."""
    pins = locked()
    for name, (version, hashes) in pins.items():
        assert hashes, f"requirements.lock: {name}=={version} has no --hash (pip-compile --generate-hashes)"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    project = pyproject()["project"]
    assert isinstance(project, dict)
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a dependency in pyproject.toml but not in requirements.lock: run make lock"
        assert pins[name][0] in requirement.specifier, f"requirements.lock pins {name} outside {requirement}"


@pytest.mark.parametrize("extra", ["shop-redis", "edge-redis"])
def test_the_image_has_the_redis_client_from_the_lock(extra: str) -> None:
    """prod's orders and inventory keep their state in Redis (SHOP_STORE, the shop-redis extra), and its edges
    their rate limits and cache (edge-redis): the image installs both extras, whose requirements the lock pins
    like the rest."""
    *_, final = stages(DOCKERFILE)
    installs = [run for run in final.args("RUN") if "pip install" in run]
    named = [found for run in installs for found in re.findall(r"meshlet\[([^\]]*)\]", run)]
    extras = {e.strip() for found in named for e in found.split(",")}
    assert extra in extras, installs
    project = pyproject()["project"]
    assert isinstance(project, dict)
    pins = locked()
    for dependency in project["optional-dependencies"][extra]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} (extra {extra}) is not in requirements.lock: run make lock"
        assert pins[name][0] in requirement.specifier, f"requirements.lock pins {name} outside {requirement}"


def test_a_builder_makes_wheels_and_the_final_stage_installs_only_those() -> None:
    build, final = stages(DOCKERFILE)
    assert build.name, "the builder is a named stage"
    wheels = [run for run in build.args("RUN") if "pip wheel" in run]
    assert any("--require-hashes" in run and "-r requirements.lock" in run for run in wheels), wheels
    project = [run for run in wheels if run.rstrip().endswith(" .")]
    assert project, "the builder makes the project's own wheel"
    assert all("--no-deps" in run for run in project), "the project's dependencies come from the lock alone"
    installs = [run for run in final.args("RUN") if "pip install" in run]
    assert installs, "the final stage installs the wheels"
    assert all("--no-index" in run and f"from={build.name}" in run for run in installs), installs
    assert not final.args("COPY"), "no source tree in the final stage"


def test_the_final_stage_is_slim_and_has_no_build_tools() -> None:
    *_, final = stages(DOCKERFILE)
    base = re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], final.base)
    assert "slim" in base, base
    for run in final.args("RUN"):
        assert "apt-get install" not in run, run
        assert "apk add" not in run, run
        assert not COMPILERS.search(run), run


def test_the_image_runs_as_a_numeric_non_root_user_that_prod_pods_match() -> None:
    *_, final = stages(DOCKERFILE)
    user = final.args("USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: runAsNonRoot can only verify a numeric user"
    assert int(uid) > 0
    assert gid.isdigit()
    for w in workloads(render("prod")):
        images = {c["image"].split(":")[0] for c in w.containers()}
        if "meshlet" in images:
            assert w.pod["securityContext"]["runAsUser"] == int(uid), w.name


def test_the_commands_the_image_and_the_manifests_run_are_installed() -> None:
    """CMD names a console script; every meshlet container in every overlay runs a console script from
    pyproject or ``python -m <module>`` of a module the wheel contains."""
    *_, final = stages(DOCKERFILE)
    commands = [json.loads(args) for args in final.args("CMD")]
    commands += [
        c["command"]
        for overlay in OVERLAYS
        for w in workloads(render(overlay))
        for c in w.containers()
        if c["image"].split(":")[0] == "meshlet"
    ]
    packages = packaged_modules()
    for command in commands:
        if command[0] == "python":
            assert command[1] == "-m", command
            module = command[2]
            assert module.rpartition(".")[0] in packages or module in packages, (
                f"{module} is not in the wheel: add its package to [tool.setuptools.packages] in pyproject.toml"
            )
            mains = (REPO_ROOT / root / module.replace(".", "/") / "__main__.py" for root in source_roots())
            assert any(main.exists() for main in mains), module
        elif command[0] != "meshlet" or command[1:] != ["--help"]:
            assert command[0] in scripts(), f"{command[0]} is not a console script in pyproject.toml"
        else:
            assert "meshlet" in scripts()


@pytest.mark.parametrize(
    "source", ["requirements.lock", "sdk", "sidecar", "protos", "services", "pyproject.toml", "README.md", "LICENSE"]
)
def test_what_the_builder_copies_exists_and_is_not_ignored(source: str) -> None:
    build = stages(DOCKERFILE)[0]
    copied = {word.rstrip("/") for args in build.args("COPY") for word in args.split()[:-1]}
    assert source in copied
    assert (REPO_ROOT / source).exists()
    ignored = {line.strip().rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert source not in ignored
    assert {".git", ".venv", "tests"} <= ignored


def test_images_are_labelled_and_tagged_with_the_version_and_the_commit() -> None:
    """Every build of `make image` has its own tag, so a node never keeps a stale image under a reused one."""
    *_, final = stages(DOCKERFILE)
    labels = " ".join(final.args("LABEL"))
    assert "org.opencontainers.image.version=${MESHLET_VERSION}" in labels
    assert "org.opencontainers.image.revision=${MESHLET_REVISION}" in labels
    makefile = (REPO_ROOT / "Makefile").read_text()
    image = makefile.split("\nimage:", 1)[1].split("\n\n", 1)[0]
    assert "-t $(IMAGE):$(VERSION)-g$(shell git rev-parse --short=12 HEAD)" in image, image
    assert "--build-arg MESHLET_REVISION=$(REVISION)" in image
