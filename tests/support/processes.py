"""Child processes for tests: started in their own process group, logged to a file, and always stopped
(SIGTERM, then SIGKILL) at teardown, also when the test fails."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the kernel picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    """A running child process and the file its output goes to."""

    argv: Sequence[str]
    log_path: Path
    popen: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; returns the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        else:  # reap any grandchildren left in the group
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.popen.returncode


class Processes:
    """Starts children and stops every one of them in `close()`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, argv: Sequence[str], *, name: str, env: dict[str, str] | None = None) -> Child:
        log_path = self.log_dir / f"{name}-{len(self.children)}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        child = Child(argv=argv, log_path=log_path, popen=popen)
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()


@contextmanager
def processes(log_dir: Path) -> Iterator[Processes]:
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        procs.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll `predicate` until it holds; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout_s: float = 30.0,
    *,
    blocking: bool = False,
    interval_s: float = 0.05,
) -> None:
    """`wait_until` for async tests: the event loop keeps turning between tries, as it may be serving what is
    checked. `check` returns a bool or an awaitable of one; `blocking=True` runs a sync check that blocks (on
    HTTP, say) in a thread instead of on the loop. `timeout_s` bounds a failure and is never a timing assertion."""
    give_up = time.monotonic() + timeout_s
    while True:
        result = await asyncio.to_thread(check) if blocking else check()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def http_answers(url: str) -> bool:
    """True once a server at `url` answers HTTP at all, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def meshlet_argv(*args: str) -> list[str]:
    """Run the ``meshlet`` CLI with this interpreter (no PATH lookup, works in any venv)."""
    return [sys.executable, "-m", "meshlet.cli", *args]
