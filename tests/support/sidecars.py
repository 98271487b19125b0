"""Sidecars and plain apps as child processes, for tests that run the mesh the way an operator does: each sidecar
is ``python -m meshlet_sidecar --config FILE`` with its listeners on free loopback ports, each app is
``python -m tests.support.plain_app`` (grpcio only, no meshlet). Both are started through the `procs` fixture,
so they are always stopped, and `start_*` returns only once the process serves (a sidecar: its admin page
answers; with ``wait_ready``, ``/ready`` says 200), or fails with the process's own output."""

from __future__ import annotations

import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import Child, Processes, free_port, http_answers, wait_until

START_S = 30.0  # a bound on waiting for a process that must start, never a timing assertion
READY_S = 30.0


def sidecar_argv(*args: str) -> list[str]:
    """Run the sidecar with this interpreter, as its console script ``meshlet-sidecar`` would."""
    return [sys.executable, "-m", "meshlet_sidecar", *args]


@dataclass
class PlainAppProcess:
    """``tests.support.plain_app`` serving on 127.0.0.1:`port`."""

    child: Child
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_plain_app(
    procs: Processes, name: str = "app", port: int | None = None, *, with_reflection: bool = False
) -> PlainAppProcess:
    """Start the plain echo app (serving reflection when asked) and wait until it prints ``listening on PORT``."""
    port = port or free_port()
    argv = [sys.executable, "-m", "tests.support.plain_app", "--port", str(port)]
    child = procs.start([*argv, "--reflection"] if with_reflection else argv, name=name)
    try:
        wait_until(lambda: f"listening on {port}" in child.output() or not child.alive(), START_S, f"{name} to serve")
    except AssertionError:
        raise AssertionError(f"{name} did not start:\n{child.output()}") from None
    if not child.alive():
        raise AssertionError(f"{name} exited at start:\n{child.output()}")
    return PlainAppProcess(child, port)


@dataclass
class SidecarProcess:
    """A running ``meshlet-sidecar``: its ports, its config file, its admin page."""

    name: str
    child: Child
    config_path: Path
    admin_port: int
    outbound_port: int
    inbound_port: int | None  # None for an outbound-only sidecar (no app)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def ready(self) -> tuple[int, str]:
        """What ``/ready`` answers now: (status, body); (0, reason) when nothing answers."""
        return admin_get(self.admin_url + "/ready")

    def is_ready(self) -> bool:
        return self.ready()[0] == 200

    def wait_ready(self, timeout_s: float = READY_S) -> None:
        try:
            wait_until(lambda: self.is_ready() or not self.child.alive(), timeout_s, f"sidecar {self.name} /ready")
        except AssertionError:
            raise AssertionError(f"sidecar {self.name} never turned ready {self.ready()}:\n{self.output()}") from None
        if not self.child.alive():
            raise AssertionError(f"sidecar {self.name} exited ({self.child.popen.returncode}):\n{self.output()}")

    def output(self) -> str:
        return self.child.output()

    def __repr__(self) -> str:
        inbound = f" inbound :{self.inbound_port}" if self.inbound_port else ""
        return f"<SidecarProcess {self.name} pid {self.child.pid} admin :{self.admin_port}{inbound}>"


def admin_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()
    except (urllib.error.URLError, ConnectionError, OSError) as error:
        return 0, str(error)


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(_plain(config), sort_keys=False))
    return path


def start_sidecar(
    procs: Processes,
    folder: Path,
    name: str,
    config: Mapping[str, Any],
    *,
    app: str | None = None,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    inbound_port: int | None = None,
    wait_ready: bool = True,
) -> SidecarProcess:
    """Write `config` to ``folder/<name>.yaml`` and start a sidecar on it, with admin, outbound and (when it has
    an `app`) inbound on free loopback ports given as flags. Waits for the admin page, and with `wait_ready`
    for ``/ready`` to say 200."""
    config_path = write_config(folder / f"{name}.yaml", config)
    admin_port, outbound_port = free_port(), free_port()
    argv = [
        "--config", str(config_path),
        "--admin-addr", f"127.0.0.1:{admin_port}",
        "--outbound-addr", f"127.0.0.1:{outbound_port}",
    ]  # fmt: skip
    if app is not None:
        inbound_port = inbound_port or free_port()
        argv += ["--app-addr", app, "--inbound-addr", f"127.0.0.1:{inbound_port}"]
    child = procs.start(sidecar_argv(*argv, *flags), name=f"sidecar-{name}", env=dict(env or {}))
    sidecar = SidecarProcess(name, child, config_path, admin_port, outbound_port, inbound_port if app else None)
    url = sidecar.admin_url + "/live"
    try:
        wait_until(lambda: http_answers(url) or not child.alive(), START_S, f"sidecar {name}'s admin page")
    except AssertionError:
        raise AssertionError(f"sidecar {name} did not start:\n{child.output()}") from None
    if not child.alive():
        raise AssertionError(f"sidecar {name} exited ({child.popen.returncode}) at start:\n{child.output()}")
    if wait_ready:
        sidecar.wait_ready()
    return sidecar


def run_sidecar(
    procs: Processes, *args: str, timeout_s: float = START_S, env: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """Run a sidecar that is expected to exit by itself (a bad config); returns (exit code, its output)."""
    child = procs.start(sidecar_argv(*args), name="sidecar-run", env=dict(env or {}))
    code = child.wait(timeout_s)
    return code, child.output()


def local_port_flag(upstream: str, port: int) -> list[str]:
    return ["--upstream", f"{upstream}={port}"]


def _plain(value: Any) -> Any:
    """Tuples and Paths as YAML's plain lists and strings."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


_LINE = re.compile(r"\S")


def one_line(text: str) -> bool:
    """True when `text` is exactly one non-blank line (how a bad config must be reported)."""
    return len([line for line in text.splitlines() if _LINE.search(line)]) == 1


def tls_files(folder: Path, service: str) -> dict[str, str]:
    """The ``tls`` section that makes a sidecar present `service`'s certificate from a dev CA in `folder`."""
    return {
        "source": "files",
        "cert": str(folder / f"{service}.crt"),
        "key": str(folder / f"{service}.key"),
        "ca": str(folder / "ca.crt"),
    }
