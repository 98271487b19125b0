"""Placeholder: Consul's ``?filter=`` expressions (go-bexpr), being written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FilterError(ValueError):
    """The expression does not parse."""


def compile_filter(expression: str) -> Callable[[Any], bool]:
    """Compile a bexpr expression into a predicate over one rendered JSON element."""
    raise FilterError("filter expressions are not supported yet")
