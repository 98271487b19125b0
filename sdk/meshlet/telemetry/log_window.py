"""WindowedLog: one log line per kind of thing per window, with how many there were, for what can happen on
every call (a denied caller retrying in a loop) or flap (a breaker): the first of a kind is logged at once, the
rest of its window in one line when the window ends (``count``, the lines it stands for), and a kind that stays
quiet for a window starts afresh. Kinds are bounded: past `max_kinds` in one window, the excess shares one line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 10.0
MAX_KINDS = 256
OTHERS = "(others)"


@dataclass
class _Window:
    message: str
    args: tuple[Any, ...]
    extra: Mapping[str, Any]
    count: int = 0  # lines held back since the window began
    handle: asyncio.TimerHandle | None = field(default=None, repr=False)


class WindowedLog:
    """Log through `logger` at `level`, at most one line per `key` per `window_s` (plus the first at once)."""

    def __init__(
        self, logger: logging.Logger, level: int, *, window_s: float = WINDOW_S, max_kinds: int = MAX_KINDS
    ) -> None:
        self._logger = logger
        self._level = level
        self.window_s = window_s
        self._max_kinds = max_kinds
        self._windows: dict[Hashable, _Window] = {}

    def log(self, key: Hashable, message: str, *args: Any, extra: Mapping[str, Any]) -> None:
        window = self._windows.get(key)
        if window is None and len(self._windows) >= self._max_kinds:
            key, message, args = OTHERS, "%s (and more kinds this window)", (message % args,)
            window = self._windows.get(key)
        if window is not None:  # held back until the window ends; the line says what the latest one was
            window.message, window.args, window.extra = message, args, extra
            window.count += 1
            return
        self._logger.log(self._level, message, *args, extra={**extra, "count": 1})
        self._open(key, _Window(message, args, extra))

    def flush(self) -> None:
        """Write every held-back line now (a process stopping)."""
        for key in list(self._windows):
            window = self._windows.pop(key)
            if window.handle is not None:
                window.handle.cancel()
            self._write(window)

    def _open(self, key: Hashable, window: _Window) -> None:
        self._windows[key] = window
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test calling from plain code): nothing is held back
            del self._windows[key]
            return
        window.handle = loop.call_later(self.window_s, self._close, key)

    def _close(self, key: Hashable) -> None:
        window = self._windows.pop(key)
        if window.count:  # a busy kind: its next window begins now, so it keeps one line per window
            self._write(window)
            self._open(key, _Window(window.message, window.args, window.extra))

    def _write(self, window: _Window) -> None:
        if window.count:
            message = f"{window.message} (x{window.count} in the last {self.window_s:g}s)"
            self._logger.log(self._level, message, *window.args, extra={**window.extra, "count": window.count})
