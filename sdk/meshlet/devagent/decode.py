"""Consul's request-body decoding, reproduced: keys match case-insensitively (py-consul sends ``name``,
``checks``, ``ttl``), documented snake_case aliases are accepted, unknown keys are refused, ``null`` means
absent, and durations are Go duration strings or integer nanoseconds.

A schema is a plain mapping from the canonical (PascalCase) field name to a :class:`Field`. Decoding
returns a dict keyed by canonical names, holding only the fields that were present and not null.
Errors carry Consul's wording so the HTTP layer can answer ``400 Request decode failed: ...``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["str", "int", "bool", "float", "duration", "list", "map", "object", "any"]


class DecodeError(ValueError):
    """The body cannot be decoded into the schema (Consul: 400 ``Request decode failed: <msg>``)."""


class DurationError(ValueError):
    """A duration string is not a Go duration."""


@dataclass(frozen=True)
class Field:
    """One field of a schema: its type, its extra accepted names, and (for objects) its own schema."""

    kind: Kind = "any"
    aliases: tuple[str, ...] = ()
    schema: Mapping[str, Field] | None = None  # for "object", or the items of "list"/values of "map"
    items: Kind = "any"  # element kind for "list" and value kind for "map"


@dataclass(frozen=True)
class _Index:
    by_lower_name: dict[str, str] = field(default_factory=dict)


_index_cache: dict[int, _Index] = {}


def _index(schema: Mapping[str, Field]) -> _Index:
    cached = _index_cache.get(id(schema))
    if cached is None:
        cached = _Index()
        for name, spec in schema.items():
            cached.by_lower_name[name.lower()] = name
            for alias in spec.aliases:
                cached.by_lower_name[alias.lower()] = name
        _index_cache[id(schema)] = cached
    return cached


def decode(body: Any, schema: Mapping[str, Field], where: str = "") -> dict[str, Any]:
    """Decode one JSON object against `schema`, as Go's strict ``encoding/json`` decoder would."""
    if not isinstance(body, dict):
        raise DecodeError(f"json: cannot unmarshal {_json_type(body)} into Go value of type {where or 'struct'}")
    index = _index(schema)
    out: dict[str, Any] = {}
    for key, value in body.items():
        name = index.by_lower_name.get(str(key).lower())
        if name is None:
            raise DecodeError(f'json: unknown field "{key}"')
        if value is None:
            continue
        out[name] = _convert(value, schema[name], f"{where}.{name}" if where else name)
    return out


def _convert(value: Any, spec: Field, path: str) -> Any:
    kind = spec.kind
    if kind == "any":
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise _type_error(value, "string", path)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(value, "bool", path)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | float) or not _whole(value):
            raise _type_error(value, "int", path)
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(value, "float64", path)
        return float(value)
    if kind == "duration":
        try:
            return duration_from_json(value)
        except DurationError as exc:
            raise DecodeError(f"{path}: {exc}") from None
    if kind == "object":
        assert spec.schema is not None
        return decode(value, spec.schema, path)
    if kind == "list":
        if not isinstance(value, list):
            raise _type_error(value, "array", path)
        element = Field(kind=spec.items, schema=spec.schema)
        return [_convert(item, element, f"{path}[{i}]") for i, item in enumerate(value) if item is not None]
    if kind == "map":
        if not isinstance(value, dict):
            raise _type_error(value, "object", path)
        element = Field(kind=spec.items, schema=spec.schema)
        return {str(k): _convert(v, element, f"{path}.{k}") for k, v in value.items()}
    raise AssertionError(f"unknown field kind {kind!r}")  # pragma: no cover - a schema bug


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _whole(value: int | float) -> bool:
    """An integer, or a float that is one: JSON's ``1e999999`` reads as inf, which no int() takes."""
    return isinstance(value, int) or (math.isfinite(value) and value == int(value))


def _type_error(value: Any, go_type: str, path: str) -> DecodeError:
    return DecodeError(f"json: cannot unmarshal {_json_type(value)} into Go struct field {path} of type {go_type}")


# ------------------------------------------------------------------------------------------ durations

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration string (``"1m30s"``, ``"100ms"``, ``"-1.5h"``, ``"0"``) into seconds."""
    original = text
    sign = 1.0
    if text.startswith(("+", "-")):
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise DurationError(f'time: invalid duration "{original}"')
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            if re.match(r"(\d+(?:\.\d*)?|\.\d+)$", text[pos:]):
                raise DurationError(f'time: missing unit in duration "{original}"')
            raise DurationError(f'time: invalid duration "{original}"')
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return sign * total


def duration_from_json(value: Any) -> float:
    """A duration as Consul's decoder takes it: a Go duration string, or a JSON number of nanoseconds."""
    if isinstance(value, bool):
        raise DurationError("json: cannot unmarshal bool into a duration")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if isinstance(value, str):
        return parse_duration(value)
    raise DurationError(f"json: cannot unmarshal {_json_type(value)} into a duration")


def format_duration(seconds: float) -> str:
    """Render seconds as Go's ``time.Duration.String()`` does: ``10s``, ``1m30s``, ``1h0m0s``, ``100ms``.
    In whole nanoseconds, as Go does: float arithmetic printed 86399.999999999 s as ``23h59m60s``."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanos >= size:
                return sign + _decimal(nanos, size) + unit
    hours, rest = divmod(nanos, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _decimal(rest, 1_000_000_000)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _decimal(count: int, size: int) -> str:
    """`count` / `size` (a power of ten) in decimal, without trailing zeros: 1500000, 1000000 -> ``1.5``."""
    whole, fraction = divmod(count, size)
    digits = f"{fraction:0{len(str(size)) - 1}d}".rstrip("0") if fraction else ""
    return f"{whole}.{digits}" if digits else str(whole)
