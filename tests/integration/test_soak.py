"""Two minutes of `make soak` (benchmarks/soak.py): calls at a fixed rate through the SDK and through a sidecar
pair while an instance is killed and restarted, another's health flaps and the app behind the sidecar restarts.
Nothing may leak: the descriptors and asyncio tasks of the caller, and the descriptors and threads of each
sidecar, are no more at the end than after the warm-up. Counts are compared at their floor over a stretch of
samples (calls in flight come and go; a leak raises the floor), never timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import Sample, soak

pytestmark = pytest.mark.slow

SECONDS = 120.0
WARMUP_S = 30.0
STRETCH_S = 30.0  # the floors compared: the first 30 s after the warm-up, and the last 30 s
SLACK = 2  # a channel or a task that a fault left on its way out a moment ago; a leak grows past it


def floor(samples: list[Sample], column: str) -> int:
    return min(int(getattr(s, column)) for s in samples)


@pytest.mark.timeout(SECONDS + 120)
async def test_two_minutes_of_faults_leak_no_descriptor_task_or_thread(tmp_path: Path) -> None:
    samples = await soak(tmp_path, SECONDS, rate_per_s=50, sample_every_s=5, fault_every_s=10)
    early = [s for s in samples if WARMUP_S < s.minute * 60 <= WARMUP_S + STRETCH_S]
    late = [s for s in samples if s.minute * 60 > SECONDS - STRETCH_S]
    assert early, f"no sample after the warm-up: {samples}"
    assert late, f"no sample at the end: {samples}"
    assert sum(s.calls - s.errors.total() for s in late) > 0, "the last stretch served no call"
    grown = {
        column: (floor(early, column), floor(late, column))
        for column in ("fds", "tasks", "a_fds", "a_threads", "b_fds", "b_threads", "threads")
        if floor(late, column) > floor(early, column) + SLACK
    }
    assert not grown, f"grew (after warm-up, at the end): {grown}"
