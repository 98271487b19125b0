"""The pipeline contract: a stage is ``async (call, next) -> reply``; `compose` chains stages over a terminal.

Stages are built once per upstream and composed once, so per call the pipeline costs one coroutine frame per
stage and nothing else. A stage may answer without calling ``next`` by raising a MeshError (Envoy's
StopIteration); work at completion goes in its ``try/finally``, so the reply passes back through the stages in
reverse order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)

Handler = Callable[[C], Awaitable[Any]]


class Stage(Protocol[C_contra]):
    """One step of a pipeline: do one thing to the call, then (usually) call `next`."""

    async def __call__(self, call: C_contra, next: Handler[Any], /) -> Any: ...


def compose(stages: Sequence[Stage[C]], terminal: Handler[C]) -> Handler[C]:
    """Chain `stages` so that ``stages[0]`` sees the call first and the reply last."""
    handler: Handler[C] = terminal
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(stage: Stage[C], next_handler: Handler[C]) -> Handler[C]:
    def bound(call: C) -> Awaitable[Any]:
        return stage(call, next_handler)

    bound.__qualname__ = f"{type(stage).__name__}.bound"
    return bound


Completion = Callable[[BaseException | None], None]


class ReplyStream:
    """A reply that completes after the handler returns: a response stream. Stages attach their completion work
    (release a slot, report the outcome, end a span) with `add_done_callback`; it runs once, when the stream
    ends, fails or is cancelled, with the error or None."""

    __slots__ = ("_callbacks", "_done", "_error")

    def __init__(self) -> None:
        self._callbacks: list[Completion] = []
        self._done = False
        self._error: BaseException | None = None

    def add_done_callback(self, callback: Completion) -> None:
        if self._done:
            callback(self._error)
        else:
            self._callbacks.append(callback)

    def finish(self, error: BaseException | None = None) -> None:
        """Mark the stream complete; idempotent."""
        if self._done:
            return
        self._done = True
        self._error = error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:  # innermost stage registered first: it completes first, as a finally would
            callback(error)
