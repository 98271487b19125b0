"""What a hostile-input test measures while it attacks a port: a well-behaved client's calls (counted, never
timed), the target process's peak RSS (/proc/<pid>/status VmRSS), and whether the process is still up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

MIN_GOOD_CALLS = 100  # the well-behaved client makes at least this many calls per fault, during and just after
GOOD_PAUSE_S = 0.01  # between two of its calls: a steady client, not a second flood


def rss_kib(pid: int) -> int:
    """The process's resident set, in KiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


@dataclass
class Measured:
    """What one fault did to one target."""

    ok: int = 0
    failed: int = 0
    rss_peak_kib: int = 0
    up: bool = True
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @property
    def success(self) -> float:
        return self.ok / self.total if self.total else 0.0


@contextmanager
def watched(pid: int, alive: Callable[[], bool], good_call: Callable[[], None]) -> Iterator[Measured]:
    """Run `good_call` in a loop and sample `pid`'s RSS while the body attacks; on exit, keep the client going
    until it has made MIN_GOOD_CALLS, then record whether the process is up."""
    measured = Measured(rss_peak_kib=rss_kib(pid))
    attacking = threading.Event()
    attacking.set()

    def client() -> None:
        while attacking.is_set() or measured.total < MIN_GOOD_CALLS:
            try:
                good_call()
                measured.ok += 1
            except Exception as exc:
                measured.failed += 1
                if len(measured.failures) < 5:
                    measured.failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            time.sleep(GOOD_PAUSE_S)

    def sampler() -> None:
        while attacking.is_set() or client_thread.is_alive():
            measured.rss_peak_kib = max(measured.rss_peak_kib, rss_kib(pid))
            time.sleep(0.02)

    client_thread = threading.Thread(target=client, name="well-behaved-client", daemon=True)
    sampler_thread = threading.Thread(target=sampler, name="rss-sampler", daemon=True)
    client_thread.start()
    sampler_thread.start()
    try:
        yield measured
    finally:
        attacking.clear()
        client_thread.join(120)
        sampler_thread.join(5)
        measured.up = alive()
