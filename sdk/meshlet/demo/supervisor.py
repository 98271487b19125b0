"""Child processes of the demo: started each in its own session (so a signal to one never reaches the others, and
its own children go with it), logged to a file, and always stopped, whichever way the demo ends.

Stopping is SIGTERM to every process group at once (the services drain and deregister), then SIGKILL for whatever
is left after a grace period. `stop_all` runs from the runner's ``finally`` and again from ``atexit``; a second
Ctrl-C while it waits skips the grace and kills at once. A demo that is SIGKILLed runs none of that: on Linux each
child asks the kernel for SIGTERM when the demo dies (PR_SET_PDEATHSIG), set by a small launcher that then execs
the child, since setting it in ``preexec_fn`` is unsafe in a process that runs threads (grpc's).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from meshlet.demo.topology import ChildSpec

GRACE_S = 5.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# argv: the demo's pid, then the child's argv. A demo already gone by the time the setting is made leaves the
# launcher orphaned, so it checks its parent after asking, and exits rather than start a child no one stops.
_DIE_WITH_DEMO = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
_Handler = Callable[[int, FrameType | None], Any] | int | None


class ChildFailed(Exception):
    """A child exited or never turned ready: the message names it and ends with its last log lines."""


@dataclass
class Child:
    spec: ChildSpec
    log_path: Path
    popen: subprocess.Popen[bytes] = field(repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


def dies_with_this_process(argv: Sequence[str]) -> list[str]:
    """`argv` started so that the kernel sends it SIGTERM when this process dies, on Linux; as is elsewhere."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_DEMO, str(os.getpid()), *argv]


class Supervisor:
    """Starts children from `ChildSpec`s and stops every one it started. Use as a context manager."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Child] = []
        self._hurry = False

    def __enter__(self) -> Supervisor:
        atexit.register(self.stop_all)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop_all()
        finally:
            atexit.unregister(self.stop_all)

    def start(self, spec: ChildSpec, env: Mapping[str, str]) -> Child:
        """Start `spec` with exactly `env` (a restart of a name starts a fresh process; the old one must be gone)."""
        log_path = self.log_dir / f"{spec.name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                dies_with_this_process(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )
        child = Child(spec, log_path, popen)
        self._children.append(child)
        return child

    def child(self, name: str) -> Child:
        """The most recent child started under `name`."""
        for child in reversed(self._children):
            if child.name == name:
                return child
        raise KeyError(f"no child named {name!r}")

    def running(self) -> list[Child]:
        return [child for child in self._children if child.alive()]

    def kill(self, name: str) -> None:
        """SIGKILL `name`'s process group, as an OOM kill or a crash would, and reap it."""
        child = self.child(name)
        child.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(GRACE_S)

    def exited(self) -> list[Child]:
        """The children whose latest process under their name is no longer running."""
        latest = {child.name: child for child in self._children}
        return [child for child in latest.values() if not child.alive()]

    def check_alive(self, names: list[str] | None = None) -> None:
        """Raise ChildFailed for the first child (of `names`, default all) whose latest process has exited."""
        for child in self.exited():
            if names is None or child.name in names:
                raise ChildFailed(f"{child.name} exited with status {child.popen.returncode}:\n{child.tail()}")

    def stop_all(self, grace_s: float = GRACE_S) -> None:
        """SIGTERM every group, wait up to `grace_s` for all of them, SIGKILL the rest, reap everything."""
        children = [child for child in self._children if child.alive()]
        for child in children:
            child.signal_group(signal.SIGTERM)
        previous = self._hurry_on_signals()
        try:
            deadline = time.monotonic() + grace_s
            while any(child.alive() for child in children) and time.monotonic() < deadline and not self._hurry:
                time.sleep(0.05)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        for child in children:
            child.signal_group(signal.SIGKILL)  # the whole group, also when its leader already exited
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(GRACE_S)

    def _hurry_on_signals(self) -> dict[int, _Handler]:
        """While stopping, another Ctrl-C, SIGTERM or SIGHUP means "now": skip the rest of the grace period."""

        def hurry(signum: int, frame: FrameType | None) -> None:
            self._hurry = True

        previous: dict[int, _Handler] = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
                previous[sig] = signal.signal(sig, hurry)
        return previous

    def __repr__(self) -> str:
        return f"<Supervisor {len(self.running())} of {len(self._children)} children running, logs in {self.log_dir}>"
