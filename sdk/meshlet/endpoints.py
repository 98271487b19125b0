"""Endpoint and EndpointSet: what discovery produces and balancing consumes. Immutable, so a new set from
Consul replaces the old one in one assignment and readers never see half an update."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, eq=False)
class Endpoint:
    """One instance of a service: where to dial and what Consul says about it.

    Its identity is its address and port alone, so a changed weight or tag is the same endpoint (its
    channel, breaker and load stay), and its hash is computed once: endpoints key several dicts per call.
    """

    address: str
    port: int
    weight: int = 1
    tags: frozenset[str] = frozenset()
    meta: Mapping[str, str] = field(default_factory=dict)
    instance_id: str = ""
    _hash: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.address, self.port)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return self.port == other.port and self.address == other.address

    @property
    def authority(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    def __str__(self) -> str:
        return self.authority


@dataclass(frozen=True, slots=True)
class EndpointDiff:
    added: frozenset[Endpoint]
    removed: frozenset[Endpoint]


class EndpointSet:
    """An immutable set of endpoints in a stable order (by authority)."""

    __slots__ = ("_by_key", "endpoints")

    def __init__(self, endpoints: Iterable[Endpoint] = ()) -> None:
        unique = {(e.address, e.port): e for e in endpoints}
        self.endpoints: tuple[Endpoint, ...] = tuple(unique[k] for k in sorted(unique))
        self._by_key = unique

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self.endpoints)

    def __len__(self) -> int:
        return len(self.endpoints)

    def __contains__(self, endpoint: object) -> bool:
        return isinstance(endpoint, Endpoint) and (endpoint.address, endpoint.port) in self._by_key

    def __eq__(self, other: object) -> bool:
        """Equal when every endpoint and what Consul says of it (weight, tags) are the same."""
        if not isinstance(other, EndpointSet) or self.endpoints != other.endpoints:
            return False
        return all(
            (a.weight, a.tags) == (b.weight, b.tags) for a, b in zip(self.endpoints, other.endpoints, strict=True)
        )

    def __hash__(self) -> int:
        return hash(self.endpoints)

    def with_tags(self, required: frozenset[str]) -> EndpointSet:
        """The subset carrying every tag in `required` (canary and version subsets)."""
        return self if not required else EndpointSet(e for e in self.endpoints if required <= e.tags)

    def diff(self, newer: EndpointSet) -> EndpointDiff:
        """What changed from this set to `newer`, by address (a changed weight or tag is an update, not a move)."""
        old, new = set(self._by_key), set(newer._by_key)
        return EndpointDiff(
            added=frozenset(newer._by_key[k] for k in new - old),
            removed=frozenset(self._by_key[k] for k in old - new),
        )

    def __repr__(self) -> str:
        return f"<EndpointSet [{', '.join(map(str, self.endpoints))}]>"
