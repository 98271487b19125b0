"""The OpenAPI 3.1 document of the edge, built once at start from the same route table that serves requests, so the
document cannot drift from what the edge answers. Pure: descriptors and comments in, a JSON-ready dict out.

Schemas follow protobuf's proto3 JSON mapping, as transcode.py reads and writes it: lowerCamelCase names, 64-bit
integers as strings, enums by name, well-known types in their JSON forms, maps as objects, every message a
component (so recursion is a ``$ref``). Request bodies are strict (``additionalProperties: false``), as the edge
is. The protos' comments become descriptions (from a descriptor set written with ``--include_source_info``).

Path templates become OpenAPI paths: a literal segment stays, each wildcard becomes a parameter, a custom verb
stays a suffix: ``/v2/{name=inventory/items/*}:reserve`` is ``/v2/inventory/items/{name}:reserve``, and its
description says that ``name`` is sent as ``inventory/items/{name}``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import descriptor, descriptor_pb2
from google.rpc import status_pb2

from meshlet_edge import openapi_streams
from meshlet_edge.lifecycle import Deprecation, method_of
from meshlet_edge.routes import Route
from meshlet_edge.templates import ANY, ONE

Schema = dict[str, Any]
FD = descriptor.FieldDescriptor

INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
UINT32 = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"}
UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"}
NOT_FINITE = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}
DOUBLE = {"anyOf": [{"type": "number", "format": "double"}, NOT_FINITE]}
FLOAT = {"anyOf": [{"type": "number", "format": "float"}, NOT_FINITE]}
BYTES = {"type": "string", "format": "byte", "contentEncoding": "base64"}
SCALARS: dict[int, Schema] = {
    FD.TYPE_DOUBLE: DOUBLE,
    FD.TYPE_FLOAT: FLOAT,
    FD.TYPE_INT64: INT64,
    FD.TYPE_SINT64: INT64,
    FD.TYPE_SFIXED64: INT64,
    FD.TYPE_UINT64: UINT64,
    FD.TYPE_FIXED64: UINT64,
    FD.TYPE_INT32: INT32,
    FD.TYPE_SINT32: INT32,
    FD.TYPE_SFIXED32: INT32,
    FD.TYPE_UINT32: UINT32,
    FD.TYPE_FIXED32: UINT32,
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: BYTES,
}
# The well-known types whose JSON form is not an object of their fields.
WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time", "examples": ["2027-01-15T01:30:15.01Z"]},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]{1,12}(\.[0-9]{1,9})?s$", "examples": ["1.5s"]},
    "google.protobuf.FieldMask": {"type": "string", "description": "Field paths in lowerCamelCase, comma-separated."},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string", "description": "The type URL of the message packed here."}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    "google.protobuf.DoubleValue": DOUBLE,
    "google.protobuf.FloatValue": FLOAT,
    "google.protobuf.Int64Value": INT64,
    "google.protobuf.UInt64Value": UINT64,
    "google.protobuf.Int32Value": INT32,
    "google.protobuf.UInt32Value": UINT32,
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": BYTES,
}
# Well-known types a query parameter can carry (their JSON form is one string, number or boolean).
QUERY_WELL_KNOWN = {
    name for name, schema in WELL_KNOWN.items() if schema.get("type") != "object" and "items" not in schema
}
QUERY_WELL_KNOWN -= {"google.protobuf.Value"}
MAX_QUERY_DEPTH = 3  # nested query parameters (``filter.availability``) this deep; recursive messages stop here

STATUS = "google.rpc.Status"
PATH_ITEM_VERBS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}  # OpenAPI 3.1's Path Item
ERRORS = {
    "400": "The request is not the method's message (a field violation names where), or the upstream refused it "
    "as INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE.",
    "503": "UNAVAILABLE: the upstream has no healthy endpoint, its breakers are open, or it is overloaded; an "
    "ErrorInfo with domain meshlet.dev says which. Retry later.",
    "504": "DEADLINE_EXCEEDED: the call's deadline (grpc-timeout, else the upstream's timeout) passed.",
}
DEFAULT_ERROR = (
    "Any other gRPC status, mapped to HTTP as grpc-gateway maps it (e.g. NOT_FOUND 404, ALREADY_EXISTS 409)."
)
GRPC_TIMEOUT = {
    "name": "grpc-timeout",
    "in": "header",
    "required": False,
    "description": "The call's deadline, in gRPC's form: 1 to 8 digits and a unit (H M S m u n), e.g. 250m.",
    "schema": {"type": "string", "pattern": "^[0-9]{1,8}[HMSmun]$"},
}

# Source locations (descriptor.proto's field numbers): the paths that source_code_info comments are keyed by.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE, _FILE_PACKAGE = 4, 5, 6, 2
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def comments_of(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    """Each commented element's leading (else trailing) comment by full name: ``pkg.Message``, ``pkg.Message.field``,
    ``pkg.Enum.VALUE``, ``pkg.Service.Method``, and ``pkg`` for the comment above the package line. Empty for
    files written without ``--include_source_info``."""
    found: dict[str, str] = {}
    for file in files:
        text = {
            tuple(where.path): (where.leading_comments or where.trailing_comments).strip()
            for where in file.source_code_info.location
            if where.leading_comments or where.trailing_comments
        }
        if not text:
            continue
        prefix = file.package + "." if file.package else ""

        def note(name: str, path: tuple[int, ...], text: dict[tuple[int, ...], str] = text) -> None:
            if path in text:
                found.setdefault(name, _unwrap(text[path]))

        note(file.package, (_FILE_PACKAGE,))

        def message(proto: descriptor_pb2.DescriptorProto, name: str, path: tuple[int, ...]) -> None:
            note(name, path)
            for index, field in enumerate(proto.field):
                note(f"{name}.{field.name}", (*path, _MESSAGE_FIELD, index))
            for index, nested in enumerate(proto.nested_type):
                message(nested, f"{name}.{nested.name}", (*path, _MESSAGE_NESTED, index))
            for index, nested_enum in enumerate(proto.enum_type):
                enum(nested_enum, f"{name}.{nested_enum.name}", (*path, _MESSAGE_ENUM, index))

        def enum(proto: descriptor_pb2.EnumDescriptorProto, name: str, path: tuple[int, ...]) -> None:
            note(name, path)
            for index, value in enumerate(proto.value):
                note(f"{name}.{value.name}", (*path, _ENUM_VALUE, index))

        for index, message_proto in enumerate(file.message_type):
            message(message_proto, prefix + message_proto.name, (_FILE_MESSAGE, index))
        for index, enum_proto in enumerate(file.enum_type):
            enum(enum_proto, prefix + enum_proto.name, (_FILE_ENUM, index))
        for index, service in enumerate(file.service):
            note(prefix + service.name, (_FILE_SERVICE, index))
            for method_index, method in enumerate(service.method):
                note(f"{prefix}{service.name}.{method.name}", (_FILE_SERVICE, index, _SERVICE_METHOD, method_index))
    return found


def _unwrap(comment: str) -> str:
    """A comment's lines as paragraphs: single line breaks joined, blank lines kept."""
    paragraphs = [" ".join(line.strip() for line in block.splitlines()) for block in comment.split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


class Schemas:
    """The components: one schema per message and enum met, named by full name; a reference to each."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self.comments = comments
        self.components: dict[str, Schema] = {}

    def message(self, message: descriptor.Descriptor) -> Schema:
        """A reference to `message`'s schema (or its well-known JSON form, inline)."""
        if message.full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[message.full_name])
        if message.full_name not in self.components:
            self.components[message.full_name] = {}  # placed first: a recursive field finds it and refers to it
            self.components[message.full_name] = self.object(message)
        return _ref(message.full_name)

    def object(self, message: descriptor.Descriptor, leave_out: Iterable[str] = ()) -> Schema:
        """`message` as an object of its fields by JSON name, without the fields `leave_out` names."""
        skipped = set(leave_out)
        properties = {f.json_name: self.field(f) for f in message.fields if f.name not in skipped}
        schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
        description = [self.comments.get(message.full_name, "")]
        for oneof in message.oneofs:
            if len(oneof.fields) > 1 and not oneof.name.startswith("_"):  # "_x": a proto3 optional, not a choice
                names = ", ".join(f.json_name for f in oneof.fields)
                description.append(f"At most one of {names} ({oneof.name}).")
        _describe(schema, " ".join(d for d in description if d))
        if message.GetOptions().deprecated:
            schema["deprecated"] = True
        return schema

    def field(self, field: descriptor.FieldDescriptor) -> Schema:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            schema: Schema = {"type": "object", "additionalProperties": self.value(value)}
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value(field)}
        else:
            schema = self.value(field)
        _describe(schema, self.comments.get(field.full_name, ""))
        if field.GetOptions().deprecated:
            schema["deprecated"] = True
        return schema

    def value(self, field: descriptor.FieldDescriptor) -> Schema:
        """One value of `field` (an element, when it is repeated)."""
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return dict(SCALARS[field.type])

    def enum(self, enum: descriptor.EnumDescriptor) -> Schema:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        if enum.full_name not in self.components:
            lines = [self.comments.get(enum.full_name, "")]
            for value in enum.values:
                said = self.comments.get(f"{enum.full_name}.{value.name}")
                if said:
                    lines.append(f"- `{value.name}`: {said}")
            schema: Schema = {"type": "string", "enum": [value.name for value in enum.values]}
            _describe(schema, "\n".join(line for line in lines if line))
            self.components[enum.full_name] = schema
        return _ref(enum.full_name)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _describe(schema: Schema, text: str) -> None:
    if text:
        schema["description"] = text


def document(
    routes: Sequence[Route],
    *,
    title: str,
    version: str,
    comments: Mapping[str, str] | None = None,
    deprecations: Mapping[str, Deprecation] | None = None,
    max_body_bytes: int | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`; `deprecations` by gRPC path (``/pkg.Service/Method``)."""
    said = comments or {}
    deprecated = deprecations or {}
    schemas = Schemas(said)
    schemas.components[STATUS] = {}
    status = schemas.object(status_pb2.Status.DESCRIPTOR)
    status["description"] = (
        "Every error the edge answers: the JSON form of google.rpc.Status, whose code is the gRPC status code and "
        "whose details (ErrorInfo, BadRequest, RetryInfo, ...) say why and what to do."
    )
    schemas.components[STATUS] = status
    paths: dict[str, dict[str, Any]] = {}
    services: dict[str, descriptor.ServiceDescriptor] = {}
    seen_ids: dict[str, int] = {}
    for route in routes:
        method = method_of(route)
        services.setdefault(method.containing_service.full_name, method.containing_service)
        operation_id = f"{method.containing_service.full_name}.{method.name}"
        seen_ids[operation_id] = seen_ids.get(operation_id, 0) + 1
        if seen_ids[operation_id] > 1:  # an additional binding of the same method
            operation_id += f"_{seen_ids[operation_id]}"
        path, parameters = _same_names(*_path(route, schemas), paths)
        operation = _operation(route, method, operation_id, parameters, schemas, said, deprecated.get(route.path))
        if route.body and not route.client_streaming:  # a WebSocket's messages travel in its frames
            operation["requestBody"] = _body(route, schemas)
            if max_body_bytes is not None:
                why = f"The body is larger than {max_body_bytes} bytes, the most the edge accepts."
                operation["responses"] = dict(sorted({**operation["responses"], "413": _error_response(why)}.items()))
        verb = route.verb.lower()  # a custom HTTP method (PURGE) has no field of OpenAPI 3.1's: an x- extension
        paths.setdefault(path, {})[verb if verb in PATH_ITEM_VERBS else f"x-{verb}"] = operation
    tags = [{"name": name, **_text(said.get(name))} for name, _service in sorted(services.items())]
    packages = sorted({service.file.package for service in services.values()})
    intro = [said[package] for package in packages if said.get(package)]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "\n\n".join(
                [
                    "HTTP/JSON in front of gRPC services, from their protos' google.api.http annotations (proto3 "
                    "JSON: lowerCamelCase names, 64-bit integers as strings, enums by name). Every error is a "
                    "google.rpc.Status.",
                    *intro,
                ]
            ),
        },
        "tags": tags,
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(schemas.components.items()))},
    }


def _text(description: str | None) -> dict[str, str]:
    return {"description": description} if description else {}


def _operation(
    route: Route,
    method: descriptor.MethodDescriptor,
    operation_id: str,
    parameters: list[Schema],
    schemas: Schemas,
    comments: Mapping[str, str],
    deprecation: Deprecation | None,
) -> dict[str, Any]:
    description = [comments.get(method.full_name, ""), f"gRPC: `{route.path}`."]
    if deprecation is not None:
        description.append(deprecation.describe())
    if route.body != "*":
        parameters = [*parameters, *_query(route, schemas)]
    ok = schemas.message(route.response_type.DESCRIPTOR)
    if route.response_body:
        ok = schemas.field(route.response_type.DESCRIPTOR.fields_by_name[route.response_body])
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {"schema": ok}}}}
    for code, why in ERRORS.items():
        responses[code] = _error_response(why)
    responses["default"] = _error_response(DEFAULT_ERROR)
    if route.client_streaming:
        request = schemas.message(route.request_type.DESCRIPTOR)
        responses = openapi_streams.websocket_responses(request, ok, _ref(STATUS), _error_response)
    elif route.server_streaming:
        responses["200"] = openapi_streams.server_stream_ok(ok, _ref(STATUS))
        responses["406"] = _error_response(openapi_streams.NOT_ACCEPTABLE)
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": method.name,
        "description": "\n\n".join(d for d in description if d),
        "tags": [method.containing_service.full_name],
        "parameters": [*parameters, GRPC_TIMEOUT],
        "responses": responses,
        "x-grpc-method": route.path,
    }
    if deprecation is not None:
        operation["deprecated"] = True
        for response in responses.values():
            response["headers"] = deprecation.documented_headers()
    return operation


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(STATUS)}}}


def _path(route: Route, schemas: Schemas) -> tuple[str, list[Schema]]:
    """The OpenAPI path of `route`'s template and its path parameters."""
    template = route.template
    message = route.request_type.DESCRIPTOR
    segments: list[str] = []
    parameters: list[Schema] = []
    unnamed = 0
    wildcards: dict[str | None, int] = {}
    for piece in template.pieces:
        if piece.text not in (ONE, ANY):
            segments.append(piece.text)
            continue
        if piece.variable is None:
            unnamed += 1
            name = f"segment{unnamed}"
            parameters.append(_path_parameter(name, {"type": "string", "minLength": 1}, "A path segment."))
            segments.append("{" + name + "}")
            continue
        wildcards[piece.variable] = wildcards.get(piece.variable, 0) + 1
        count = wildcards[piece.variable]
        name = piece.variable if count == 1 else f"{piece.variable}_{count}"
        segments.append("{" + name + "}")
        field = _field_at(message, piece.variable)
        whole = [p for p in template.pieces if p.variable == piece.variable]
        if len(whole) == 1 and piece.text == ONE and field is not None:
            schema: Schema = schemas.value(field) if not field.is_repeated else {"type": "string"}
            if schema.get("type") == "string" and "pattern" not in schema:
                schema["minLength"] = 1
            description = schemas.comments.get(field.full_name, "")
        else:
            schema = {"type": "string", "minLength": 1}  # the field is a string: several segments and literals
            shown = "/".join("{" + piece.variable + "}" if p is piece else p.text for p in whole)
            description = f"Sent as the field `{piece.variable}` = `{shown}`."
            if piece.text == ANY:
                description += " May hold several segments."
        parameters.append(_path_parameter(name, schema, description))
    path = "/" + "/".join(segments) + (":" + template.verb if template.verb else "")
    return path, parameters


_PARAMETER = re.compile(r"\{([^}]+)\}")


def _same_names(path: str, parameters: list[Schema], paths: Mapping[str, Any]) -> tuple[str, list[Schema]]:
    """`path` under the parameter names of a path already documented with the same segments (``/v1/orders/{id}``
    beside ``/v1/orders/{order_id}``: OpenAPI forbids two such paths), its parameters renamed to match."""
    shape = _PARAMETER.sub("{}", path)
    for known in paths:
        if known != path and _PARAMETER.sub("{}", known) == shape:
            renamed = dict(zip(_PARAMETER.findall(path), _PARAMETER.findall(known), strict=True))
            for parameter in parameters:
                if parameter["in"] == "path":
                    parameter["name"] = renamed[parameter["name"]]
            return known, parameters
    return path, parameters


def _path_parameter(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema, **_text(description)}


def _field_at(message: descriptor.Descriptor, dotted: str) -> descriptor.FieldDescriptor | None:
    current: descriptor.Descriptor | None = message
    found = None
    for part in dotted.split("."):
        if current is None or part not in current.fields_by_name:
            return None
        found = current.fields_by_name[part]
        current = found.message_type
    return found


def _query(route: Route, schemas: Schemas) -> list[Schema]:
    """The query parameters of `route`: every field neither the path nor the body binds, nested ones by dotted
    JSON names, repeated ones by repetition (``skus=a&skus=b``)."""
    bound = set(route.template.variables)
    if route.body:
        bound.add(route.body)
    found: list[Schema] = []

    def walk(message: descriptor.Descriptor, proto_prefix: str, json_prefix: str, depth: int) -> None:
        for field in message.fields:
            proto_path, json_path = proto_prefix + field.name, json_prefix + field.json_name
            if proto_path in bound:
                continue
            kind = field.message_type
            if kind is not None and kind.GetOptions().map_entry:
                continue  # a map has no query form
            if kind is not None and kind.full_name not in QUERY_WELL_KNOWN:
                if not field.is_repeated and depth < MAX_QUERY_DEPTH and kind.full_name not in WELL_KNOWN:
                    walk(kind, proto_path + ".", json_path + ".", depth + 1)
                continue
            schema = schemas.field(field)
            description = schema.pop("description", "")
            parameter: Schema = {"name": json_path, "in": "query", "required": False, "schema": schema}
            if field.is_repeated:
                parameter["style"], parameter["explode"] = "form", True
                description = (description + " Repeat the parameter for each value.").strip()
            parameter.update(_text(description))
            if schema.pop("deprecated", False):
                parameter["deprecated"] = True
            found.append(parameter)

    walk(route.request_type.DESCRIPTOR, "", "", 1)
    return found


def _body(route: Route, schemas: Schemas) -> dict[str, Any]:
    message = route.request_type.DESCRIPTOR
    if route.body == "*":
        top_bound = {variable for variable in route.template.variables if "." not in variable}
        schema = schemas.object(message, leave_out=top_bound) if top_bound else schemas.message(message)
        description = "The request message" + (
            f" (less {', '.join(sorted(top_bound))}, bound by the path)." if top_bound else "."
        )
    else:
        field = message.fields_by_name[route.body]
        schema = schemas.field(field)
        description = f"The request's field `{field.json_name}`."
    return {"required": False, "description": description, "content": {"application/json": {"schema": schema}}}
