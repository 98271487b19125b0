"""``--data-dir``: the agent's state as one JSON snapshot, written atomically so a crash mid-write leaves
the previous snapshot whole (write a temporary file, fsync, rename over the old one)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SNAPSHOT_NAME = "state.json"


def load_snapshot(data_dir: Path) -> dict[str, Any] | None:
    """The last snapshot written to `data_dir`, or None when there is none yet."""
    path = data_dir / SNAPSHOT_NAME
    if not path.exists():
        return None
    with path.open("rb") as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


def save_snapshot(data_dir: Path, snapshot: dict[str, Any]) -> None:
    """Replace the snapshot in `data_dir` atomically."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".json", dir=data_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(snapshot, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, data_dir / SNAPSHOT_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
