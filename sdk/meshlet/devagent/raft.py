"""The agent's single, monotonically increasing modify index: the stand-in for Consul's Raft index.

Every write takes the next index, and taking one wakes the blocking queries (they re-check their own
index and go back to sleep when their result did not move).
"""

from collections.abc import Callable


class RaftIndex:
    """A counter that never goes backwards and announces every advance."""

    def __init__(self, start: int = 1, on_advance: Callable[[], None] | None = None) -> None:
        self.value = max(1, start)
        self._on_advance = on_advance or (lambda: None)

    def advance(self) -> int:
        """Take the next index for a write and announce it."""
        self.value += 1
        self._on_advance()
        return self.value

    def subscribe(self, on_advance: Callable[[], None]) -> None:
        """Call `on_advance` after every write (the server wires blocking queries and persistence here)."""
        previous = self._on_advance

        def both() -> None:
            previous()
            on_advance()

        self._on_advance = both

    def __repr__(self) -> str:
        return f"<RaftIndex {self.value}>"
