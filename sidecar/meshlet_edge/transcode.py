"""JSON <-> protobuf for one route, by protobuf's proto3 JSON mapping (json_format): the request message is built
from the body (``body: "*"`` or one field), the path variables and, for the fields neither binds, the query
parameters (repeated by repetition, nested by dots). Strict: an unknown field is a refusal naming it. Pure."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn
from urllib.parse import unquote_plus

from google.protobuf import descriptor, json_format

from meshlet_edge.routes import Route
from meshlet_edge.templates import not_utf8

_NO_FIELD = re.compile(r'has no field named "([^"]+)"(?: at "[^".\[]*\.?([^"]*)")?')
_TWO_OF = re.compile(r'should not have multiple "([^"]+)" (?:oneof )?fields')
_FAILED_AT = re.compile(r" at [A-Za-z_][A-Za-z0-9_]*\.([^ ]+?)\.*$")
_FAILED_FIELD = re.compile(r"Failed to parse (\S+) field")
# A query parameter or path variable is text; JSON's true and false are not, so these become booleans first
# (the spellings Go's strconv.ParseBool reads, as grpc-gateway does).
_BOOLEANS = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}
_BOOL_VALUE = "google.protobuf.BoolValue"


class BadRequest(ValueError):
    """The request cannot become the method's message: `field` names where (a field path, or ``body``)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(description)
        self.field = field
        self.description = description


def request_message(route: Route, variables: Mapping[str, str], query: Iterable[tuple[str, str]], body: bytes) -> Any:
    """The method's request from one HTTP request; raises BadRequest."""
    if not route.body and not query and variables.keys() <= _plain_strings(route.request_type.DESCRIPTOR):
        return _from_path(route, variables)  # the common GET /v1/things/{id}: no JSON to build and walk
    fields: dict[str, Any] = {}
    if route.body:
        parsed = _json(body) if body.strip() else {}
        if route.body == "*":
            if not isinstance(parsed, dict):
                raise BadRequest("body", "the body must be a JSON object")
            fields = parsed
        else:
            fields[route.body] = parsed
    message_type = route.request_type.DESCRIPTOR
    if route.body != "*":
        # A field the path or the body binds is theirs: a query parameter cannot change it (grpc-gateway's filter).
        bound = [tuple(name.split(".")) for name in variables] + ([(route.body,)] if route.body else [])
        once: set[tuple[str, ...]] = set()  # the non-repeated fields the query set, by their proto names
        for name, value in query:
            path = _proto_path(message_type, name)
            if path is not None and any(path[: len(b)] == b or b[: len(path)] == path for b in bound):
                continue
            found = _field_at(message_type, name)
            repeated = found is not None and found.is_repeated
            if not repeated and path is not None:
                if path in once:
                    raise BadRequest(name, f"{name} is not a repeated field, yet the query sets it twice: send it once")
                once.add(path)
            _set(fields, name, _text_value(found, value), repeated=repeated)
    for name, value in variables.items():
        if not_utf8(value):
            raise BadRequest(name, f"the path's {name} is not UTF-8 once percent-decoded: escape its text as UTF-8")
        _set(fields, name, _text_value(_field_at(message_type, name), value), repeated=False)
    message = route.request_type()
    try:  # the route's own pool: an Any may name any type of the descriptor sets
        json_format.ParseDict(fields, message, ignore_unknown_fields=False, descriptor_pool=message_type.file.pool)
    except json_format.ParseError as error:
        raise BadRequest(_field_of(str(error)), str(error).splitlines()[0]) from None
    return message


def _from_path(route: Route, variables: Mapping[str, str]) -> Any:
    """The request from path variables alone, each bound to a singular string field of the request itself: set as
    they are, which is what json_format would make of them."""
    for name, value in variables.items():
        if not_utf8(value):
            raise BadRequest(name, f"the path's {name} is not UTF-8 once percent-decoded: escape its text as UTF-8")
    return route.request_type(**variables)


@functools.cache
def _plain_strings(message: descriptor.Descriptor) -> frozenset[str]:
    """The proto names of the message's own singular string fields outside a oneof (two of one oneof in one path
    are json_format's error to tell)."""
    string = descriptor.FieldDescriptor.TYPE_STRING
    plain = (f for f in message.fields if f.type == string and not f.is_repeated and f.containing_oneof is None)
    return frozenset(f.name for f in plain)


def query_params(raw_query: str) -> list[tuple[str, str]]:
    """The query's parameters in order (``+`` a space, blanks kept); raises BadRequest naming one whose
    percent-escapes are not UTF-8, rather than passing it on with its bytes replaced."""
    pairs: list[tuple[str, str]] = []
    for pair in raw_query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        try:
            pairs.append((_query_text(name), _query_text(value)))
        except UnicodeDecodeError:
            shown = unquote_plus(name, errors="replace")
            raise BadRequest(
                shown, f"the query's {shown} is not UTF-8 once percent-decoded: escape it as UTF-8"
            ) from None
    return pairs


def _query_text(text: str) -> str:
    return unquote_plus(text, errors="strict")


def response_json(route: Route, reply: Any) -> str:
    """The reply as JSON; with ``response_body``, only that field, and a field left at its default as that
    default's JSON (``[]``, ``{}``, ``0``, ``""``), not ``null``; an unset message field is ``null``."""
    pool = reply.DESCRIPTOR.file.pool
    data: Any = json_format.MessageToDict(reply, descriptor_pool=pool)
    if route.response_body:
        json_name = reply.DESCRIPTOR.fields_by_name[route.response_body].json_name
        if json_name not in data:  # at its default: the default's JSON, from an empty reply printed in full
            data = json_format.MessageToDict(type(reply)(), always_print_fields_with_no_presence=True)
        data = data.get(json_name)
    return json.dumps(data, separators=(",", ":"))


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


def _set(fields: dict[str, Any], dotted: str, value: Any, *, repeated: bool) -> None:
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


def _fields_along(message: descriptor.Descriptor, dotted: str) -> list[descriptor.FieldDescriptor] | None:
    """The fields a dotted path (proto or JSON names) goes through, or None when it names no field (json_format
    then says what is wrong)."""
    current: descriptor.Descriptor | None = message
    fields: list[descriptor.FieldDescriptor] = []
    for part in dotted.split("."):
        found = None if current is None else current.fields_by_name.get(part) or _by_json_name(current, part)
        if found is None:
            return None
        fields.append(found)
        current = found.message_type
    return fields


def _field_at(message: descriptor.Descriptor, dotted: str) -> descriptor.FieldDescriptor | None:
    along = _fields_along(message, dotted)
    return along[-1] if along else None


def _proto_path(message: descriptor.Descriptor, dotted: str) -> tuple[str, ...] | None:
    along = _fields_along(message, dotted)
    return None if along is None else tuple(field.name for field in along)


def _text_value(field: descriptor.FieldDescriptor | None, value: str) -> Any:
    """A query parameter or path variable as the JSON value json_format reads for `field`: text as it came, but a
    boolean (or BoolValue) as true or false, which proto3 JSON never reads from a string."""
    if field is None:
        return value
    is_bool = field.type == field.TYPE_BOOL or (field.message_type and field.message_type.full_name == _BOOL_VALUE)
    return _BOOLEANS.get(value.lower(), value) if is_bool else value


def _by_json_name(message: descriptor.Descriptor, name: str) -> descriptor.FieldDescriptor | None:
    return next((f for f in message.fields if f.json_name == name), None)


def _field_of(error: str) -> str:
    """The field a json_format error is about, as well as its message says it: its path from the request
    (``favourite.colour``, ``books[0].x``) where the message gives one."""
    first = error.splitlines()[0] if error else ""
    if unknown := _NO_FIELD.search(first):
        parent = unknown.group(2)
        return f"{parent}.{unknown.group(1)}" if parent else unknown.group(1)
    found = _TWO_OF.search(first) or _FAILED_AT.search(first) or _FAILED_FIELD.search(first)
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
