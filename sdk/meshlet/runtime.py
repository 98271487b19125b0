"""The event loop every meshlet process runs on: uvloop where it is installed, asyncio's own otherwise.

A grpc.aio server on uvloop spends about a fifth less CPU per call (README: "Choosing the event loop"), so every
meshlet entry point (``meshlet-sidecar``, ``meshlet dev-agent``, ``meshlet demo`` and its children, the shop's
services) starts through :func:`run`. ``MESHLET_LOOP=asyncio|uvloop|auto`` (default ``auto``) chooses. The SDK
itself never picks a loop: an app that embeds a ``Mesh`` runs on whatever loop its own ``main`` starts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from meshlet.errors import ConfigError

T = TypeVar("T")

LOOP_ENV = "MESHLET_LOOP"
LoopName = Literal["asyncio", "uvloop"]

log = logging.getLogger("meshlet.runtime")


@dataclass(frozen=True)
class LoopChoice:
    """Which loop to run and why, in the words of the start-up log line."""

    name: LoopName
    reason: str


def choose_loop(env_value: str | None, uvloop_available: bool) -> LoopChoice:
    """The loop ``MESHLET_LOOP`` (``env_value``; unset or empty = ``auto``) asks for, given whether uvloop imports.

    Raises ConfigError for a value other than asyncio, uvloop or auto, and for ``uvloop`` where it is not installed:
    asking for it by name and silently getting something else would hide the reason a process is slower.
    """
    wanted = (env_value or "auto").strip().lower()
    if wanted == "asyncio":
        return LoopChoice("asyncio", f"{LOOP_ENV}=asyncio")
    if wanted == "uvloop":
        if not uvloop_available:
            raise ConfigError(
                LOOP_ENV, env_value, "uvloop is not installed here: pip install uvloop, or set MESHLET_LOOP=auto"
            )
        return LoopChoice("uvloop", f"{LOOP_ENV}=uvloop")
    if wanted == "auto":
        if uvloop_available:
            return LoopChoice("uvloop", "auto: uvloop is installed")
        return LoopChoice("asyncio", "auto: uvloop is not installed")
    raise ConfigError(LOOP_ENV, env_value, "expected asyncio, uvloop or auto (the default: uvloop where installed)")


def uvloop_available() -> bool:
    """Whether uvloop can be imported, without importing it (a process on asyncio's loop never loads it)."""
    return sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None


def loop_from_environment() -> LoopChoice:
    """The choice for this process: ``MESHLET_LOOP`` against what is installed. Raises ConfigError."""
    return choose_loop(os.environ.get(LOOP_ENV), uvloop_available())


def loop_factory(choice: LoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What asyncio.Runner builds its loop with; None is asyncio's own default loop."""
    if choice.name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def run(main: Coroutine[Any, Any, T], *, prog: str, loop: LoopChoice | None = None) -> T:
    """Run ``main`` to completion on ``loop`` (by default the one ``MESHLET_LOOP`` chooses), logging the choice
    once at start.

    A bad ``MESHLET_LOOP`` ends the process with one line on stderr, ``<prog>: invalid config: ...``, and exit 2,
    as any other bad setting does; ``main`` is then closed unstarted. A process that validates its settings before
    it builds ``main`` (the sidecar) calls :func:`loop_from_environment` among them and passes its answer.
    """
    try:
        choice = loop or loop_from_environment()
    except ConfigError as error:
        main.close()
        print(f"{prog}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(_announced(main, choice))


async def _announced(main: Coroutine[Any, Any, T], choice: LoopChoice) -> T:
    """Log the loop as it runs (its class, not only the wish), then become ``main``."""
    loop = type(asyncio.get_running_loop())
    log.info(
        "event loop: %s (%s)",
        choice.name,
        choice.reason,
        extra={"loop": choice.name, "loop_class": f"{loop.__module__}.{loop.__qualname__}", "reason": choice.reason},
    )
    return await main
