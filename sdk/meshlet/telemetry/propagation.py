"""W3C trace context in gRPC metadata: the carrier adapter both faces use, and the propagator they share.

gRPC metadata is a sequence of ``(key, value)`` pairs with lowercase keys, so one getter reads it for the
SDK's servicer and for the sidecar's raw calls alike. The propagator is OpenTelemetry's global text map
(``OTEL_PROPAGATORS``, by default W3C ``traceparent``/``tracestate`` plus ``baggage``); nothing here parses a header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter

Pairs = Sequence[tuple[str, Any]]


class MetadataGetter(Getter[Pairs]):
    def get(self, carrier: Pairs, key: str) -> list[str] | None:
        found = [
            value if isinstance(value, str) else value.decode("ascii", "replace") for k, value in carrier if k == key
        ]
        return found or None

    def keys(self, carrier: Pairs) -> list[str]:
        return [key for key, _ in carrier]


class PairsSetter(Setter[list[tuple[str, str]]]):
    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key, value))


GETTER = MetadataGetter()
SETTER = PairsSetter()


def trace_fields() -> frozenset[str]:
    """The metadata keys the propagator owns: a hop strips them from what it received before adding its own."""
    return frozenset(propagate.get_global_textmap().fields)


def carries_context(metadata: Pairs | None, fields: frozenset[str]) -> bool:
    return bool(metadata) and any(key in fields for key, _ in metadata)  # type: ignore[union-attr]


def extract(metadata: Pairs) -> Context:
    """The caller's context (an empty one when the metadata has none)."""
    return propagate.extract(metadata, getter=GETTER)


def headers(context: Context) -> list[tuple[str, str]]:
    """The metadata that carries `context` to the next hop."""
    carrier: list[tuple[str, str]] = []
    propagate.inject(carrier, context=context, setter=SETTER)
    return carrier


def without(metadata: Pairs | None, fields: frozenset[str]) -> tuple[tuple[str, Any], ...]:
    """`metadata` minus the propagator's keys: what a hop forwards before it adds its own context."""
    return tuple(pair for pair in metadata or () if pair[0] not in fields)
