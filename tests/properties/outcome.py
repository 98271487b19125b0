"""`attempt`: run a parser and keep what it returned or the documented error it raised, so that a property can
assert on either; any other exception escapes and fails the property, which is the point."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    value: T | None
    error: Exception | None

    @property
    def refused(self) -> bool:
        return self.error is not None


def attempt(parse: Callable[[], T], documented: type[Exception] | tuple[type[Exception], ...]) -> Outcome[T]:
    try:
        return Outcome(parse(), None)
    except documented as exc:
        return Outcome(None, exc)
