"""JSON <-> protobuf for one route, by protobuf's proto3 JSON mapping (json_format): the request message is built
from the body (``body: "*"`` or one field), the path variables and, for the fields neither binds, the query
parameters (repeated by repetition, nested by dots). Strict: an unknown field is a refusal naming it. Pure."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from google.protobuf import descriptor, json_format

from meshlet_edge.routes import Route

_NO_FIELD = re.compile(r'has no field named "([^"]+)"')
_FAILED_FIELD = re.compile(r"Failed to parse (\S+) field")


class BadRequest(ValueError):
    """The request cannot become the method's message: `field` names where (a field path, or ``body``)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(description)
        self.field = field
        self.description = description


def request_message(route: Route, variables: Mapping[str, str], query: Iterable[tuple[str, str]], body: bytes) -> Any:
    """The method's request from one HTTP request; raises BadRequest."""
    fields: dict[str, Any] = {}
    if route.body:
        parsed = _json(body) if body.strip() else {}
        if route.body == "*":
            if not isinstance(parsed, dict):
                raise BadRequest("body", "the body must be a JSON object")
            fields = parsed
        else:
            fields[route.body] = parsed
    if route.body != "*":
        message_type = route.request_type.DESCRIPTOR
        once: set[tuple[str, ...]] = set()  # the non-repeated fields the query set, by their proto names
        for name, value in query:
            _check_utf8(name, value, "query parameter")
            repeated = _is_repeated(message_type, name)
            if not repeated and (key := _field_key(message_type, name)) is not None:
                if key in once:
                    raise BadRequest(name, f"{name} is not a repeated field, yet the query sets it twice: send it once")
                once.add(key)
            _set(fields, name, value, repeated=repeated)
    for name, value in variables.items():
        _check_utf8(name, value, "path's")
        _set(fields, name, value, repeated=False)
    message = route.request_type()
    try:
        json_format.ParseDict(fields, message, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise BadRequest(_field_of(str(error)), str(error).splitlines()[0]) from None
    return message


def response_json(route: Route, reply: Any) -> str:
    """The reply as JSON; with ``response_body``, only that field."""
    data: Any = json_format.MessageToDict(reply)
    if route.response_body:
        json_name = reply.DESCRIPTOR.fields_by_name[route.response_body].json_name
        data = data.get(json_name)
    return json.dumps(data, separators=(",", ":"))


def query_items(raw_query: str) -> list[tuple[str, str]]:
    """A raw query string's parameters, in order; a percent-escape that is not UTF-8 is kept as a lone surrogate
    (for `request_message` to refuse) rather than turned into U+FFFD, which would change the value unseen."""
    return parse_qsl(raw_query, keep_blank_values=True, errors="surrogateescape")


def _check_utf8(name: str, value: str, where: str) -> None:
    """Refuse a value whose percent-escapes were not UTF-8 (decoded with surrogateescape): strings are UTF-8."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadRequest(name, f"the {where} {name} is not UTF-8 once percent-decoded: escape UTF-8 bytes") from None


def _json(body: bytes) -> Any:
    """The body parsed as strict JSON (RFC 8259): no NaN or Infinity literals, no key twice in one object, where
    Python's json would take them (the last of two keys silently winning, which a proxy before the edge may read
    otherwise)."""
    try:
        return json.loads(body, object_pairs_hook=_one_of_each_key, parse_constant=_not_json)
    except BadRequest:
        raise
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest("body", f"the body is not JSON: {error}") from None
    except RecursionError:  # a JSON bomb: arrays or objects nested past Python's stack
        raise BadRequest("body", "the body nests deeper than the edge reads: flatten it") from None


def _one_of_each_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise BadRequest(key, f"the body names {key!r} twice in one object: send each field once")
        found[key] = value
    return found


def _not_json(literal: str) -> NoReturn:
    raise BadRequest(
        "body", f'the body is not JSON: {literal} is no JSON value (the proto3 mapping writes "{literal}")'
    )


def _set(fields: dict[str, Any], dotted: str, value: str, *, repeated: bool) -> None:
    *parents, leaf = dotted.split(".")
    target = fields
    for part in parents:
        nested = target.setdefault(part, {})
        if not isinstance(nested, dict):
            raise BadRequest(dotted, f"{part} is not a message, so {dotted} cannot be set")
        target = nested
    existing = target.get(leaf)
    if isinstance(existing, dict) or (existing is not None and repeated != isinstance(existing, list)):
        # ?skus.x=1&skus=2, ?filter.a=1&filter=2: a field set whole and by its parts
        raise BadRequest(dotted, f"the query sets {dotted} both whole and by its fields: send one or the other")
    if repeated:
        target.setdefault(leaf, []).append(value)
    else:
        target[leaf] = value


def _is_repeated(message: descriptor.Descriptor, dotted: str) -> bool:
    current: descriptor.Descriptor | None = message
    found: descriptor.FieldDescriptor | None = None
    for part in dotted.split("."):
        if current is None:
            return False
        found = current.fields_by_name.get(part) or _by_json_name(current, part)
        if found is None:
            return False
        current = found.message_type
    return found is not None and found.is_repeated


def _field_key(message: descriptor.Descriptor, dotted: str) -> tuple[str, ...] | None:
    """The proto names along `dotted` (each part a proto or a JSON name), or None when a part names no field."""
    current: descriptor.Descriptor | None = message
    names: list[str] = []
    for part in dotted.split("."):
        found = None if current is None else current.fields_by_name.get(part) or _by_json_name(current, part)
        if found is None:
            return None
        names.append(found.name)
        current = found.message_type
    return tuple(names)


def _by_json_name(message: descriptor.Descriptor, name: str) -> descriptor.FieldDescriptor | None:
    return next((f for f in message.fields if f.json_name == name), None)


def _field_of(error: str) -> str:
    """The field a json_format error is about, as well as its message says it."""
    found = _NO_FIELD.search(error) or _FAILED_FIELD.search(error)
    return found.group(1) if found else "body"


_TIMEOUT = re.compile(r"^([0-9]{1,8})([HMSmun])$")
_UNIT_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
MAX_TIMEOUT_S = 100 * 365 * 86400.0  # as good as none; gRPC's core takes a longer one (99999999H) as expired


def grpc_timeout(header: str | None) -> float | None:
    """The ``grpc-timeout`` request header (gRPC's own form: up to 8 digits and a unit, ``250m``) in seconds, as
    Envoy's transcoder reads it; raises BadRequest when it is malformed."""
    if header is None:
        return None
    found = _TIMEOUT.match(header.strip())
    if found is None:
        raise BadRequest(
            "grpc-timeout", f"grpc-timeout {header!r} is not 1-8 digits and a unit (H M S m u n): e.g. 250m"
        )
    return min(int(found.group(1)) * _UNIT_S[found.group(2)], MAX_TIMEOUT_S)
