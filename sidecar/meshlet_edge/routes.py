"""The edge's route table, built once at start from the configured services' descriptors: every
``google.api.http`` binding (and its ``additional_bindings``), else the default ``POST /<package.Service>/<Method>``.
Two methods on one verb and template are a config error naming both. A method that streams requests (client or
bidirectional streaming) is a WebSocket, which opens with a GET: its bindings are served as GET whatever verb
they name, and each frame is a whole request message (``body: "*"``). Any other GET with a body is a config
error: HTTP caches (the edge's own among them) key a GET on its URL, so two bodies would share one answer. A HEAD
is answered by the route a GET of its path takes, unless that route streams (`RouteTable.match`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory

from meshlet.errors import ConfigError
from meshlet_edge.templates import PathTemplate, TemplateError, parse

VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Route:
    """One verb and template bound to one method: everything a request needs, decided here and not per call."""

    verb: str  # upper case, e.g. "GET"
    template: PathTemplate
    upstream: str
    path: str  # "/shop.inventory.v1.Inventory/GetStock"
    request_type: type[Any] = field(repr=False)
    response_type: type[Any] = field(repr=False)
    body: str  # "" (none), "*" or a field name
    response_body: str = ""
    client_streaming: bool = False  # served as a WebSocket (meshlet_edge.websocket)
    server_streaming: bool = False  # answered as NDJSON or SSE (meshlet_edge.server_stream), or over the WebSocket
    safe: bool = False  # declared ``idempotency_level = NO_SIDE_EFFECTS``: a GET of it has an ETag (meshlet_edge.etags)


@dataclass(frozen=True)
class Match:
    route: Route
    variables: dict[str, str]


class RouteTable:
    """Routes by verb, the most specific template first."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        by_verb: dict[str, list[Route]] = {}
        seen: dict[tuple[str, str], Route] = {}
        for route in self.routes:
            key = (route.verb, _shape(route.template))
            other = seen.setdefault(key, route)
            if other is not route:
                raise ConfigError(
                    "edge.services",
                    f"{route.verb} {route.template}",
                    f"both {other.path} and {route.path} are bound to it: change one method's google.api.http rule",
                )
            by_verb.setdefault(route.verb, []).append(route)
        self._by_verb = {verb: sorted(found, key=_specificity) for verb, found in by_verb.items()}

    def match(self, verb: str, raw_path: str) -> Match | None:
        for route in self._by_verb.get(verb, ()):
            variables = route.template.match(raw_path)
            if variables is not None:
                return Match(route, variables)
        if verb == "HEAD":  # reached only when no route names HEAD itself: GETs and POSTs never pay for it
            return self._head(raw_path)
        return None

    def _head(self, raw_path: str) -> Match | None:
        """HEAD is GET without the body (RFC 9110 9.3.2): the GET route of `raw_path`, matched among all GET routes
        so that HEAD picks exactly the method GET would, unless that route streams. A stream's headers are sent
        before its upstream call has answered anything, so a HEAD of one could only open a call to drop it, or
        guess: it is a 405 (``Allow: GET``) instead."""
        found = self.match("GET", raw_path)
        if found is None or found.route.client_streaming or found.route.server_streaming:
            return None
        return found

    def allowed(self, raw_path: str) -> list[str]:
        """The verbs that have a route for `raw_path` (for 405's ``Allow``): HEAD wherever a GET is answered whole."""
        verbs = {verb for verb in (*self._by_verb, "HEAD") if self.match(verb, raw_path) is not None}
        return sorted(verbs)


def _specificity(route: Route) -> tuple[int, bool, int]:
    """Sort key, most specific first: more literal segments, then a custom verb (``/v1/orders/{id}:watch`` before
    ``/v1/orders/{id}``, whose variable would take ``x:watch`` whole), then more segments."""
    template = route.template
    return (-template.literal_count, template.verb is None, -len(template.pieces))


def _shape(template: PathTemplate) -> str:
    """A template with its variable names left out: two templates of one shape match the same paths."""
    pieces = "/".join(piece.text for piece in template.pieces)
    return f"/{pieces}:{template.verb or ''}"


def load_pool(descriptor_sets: Sequence[Path]) -> descriptor_pool.DescriptorPool:
    """A pool of the files in `descriptor_sets` (``protoc --include_imports --descriptor_set_out``); an empty list
    means the default pool: the generated modules this process imported (none, in ``meshlet-edge`` itself)."""
    if not descriptor_sets:
        return descriptor_pool.Default()
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    for index, path in enumerate(descriptor_sets):
        try:
            files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
        except Exception as error:  # DecodeError or OSError: the same fix
            raise ConfigError(
                f"edge.descriptor_sets[{index}]",
                str(path),
                f"is not a FileDescriptorSet ({error}): write it with protoc --include_imports --descriptor_set_out",
            ) from None
        for file in files:
            if file.name not in added:
                added.add(file.name)
                try:
                    pool.Add(file)
                except TypeError as error:  # an import missing or listed after its user
                    fix = "write the set with protoc --include_imports (every import, imports first)"
                    raise ConfigError(f"edge.descriptor_sets[{index}]", str(path), f"{error}: {fix}") from None
    return pool


def build_routes(services: Mapping[str, str], pool: descriptor_pool.DescriptorPool) -> RouteTable:
    """The table for `services` (gRPC service name -> upstream); a service missing from the descriptors, a bad
    template or a conflict is a ConfigError naming it."""
    if not services:
        example = "e.g. edge.services: {shop.orders.v1.Orders: orders}"
        raise ConfigError(
            "edge.services", "{}", f"name the gRPC services the edge serves and their upstreams, {example}"
        )
    routes: list[Route] = []
    for name, upstream in services.items():
        try:
            service = pool.FindServiceByName(name)
        except KeyError:
            raise ConfigError(
                f"edge.services.{name}",
                upstream,
                "this service is in no descriptor set: add its FileDescriptorSet to edge.descriptor_sets",
            ) from None
        for method in service.methods:
            routes.extend(_routes_of(method, upstream))
    return RouteTable(routes)


def _routes_of(method: descriptor.MethodDescriptor, upstream: str) -> Iterable[Route]:
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    options = method.GetOptions()
    rules: list[http_pb2.HttpRule] = []
    if options.HasExtension(annotations_pb2.http):
        rule = options.Extensions[annotations_pb2.http]
        rules = [rule, *rule.additional_bindings]
    else:
        rules = [http_pb2.HttpRule(post=path, body="*")]
    for rule in rules:
        kind = rule.WhichOneof("pattern")
        if kind == "custom":
            verb, template_text = rule.custom.kind.upper(), rule.custom.path
        elif kind in VERBS:
            verb, template_text = kind.upper(), getattr(rule, kind)
        else:
            raise ConfigError(f"{path} google.api.http", str(rule), "a rule needs a pattern: get, post, ...")
        try:
            template = parse(template_text)
        except TemplateError as error:
            raise ConfigError(f"{path} google.api.http", template_text, str(error)) from None
        for name in (*template.variables, *([rule.body] if rule.body not in ("", "*") else [])):
            if not _has_field_path(request_type.DESCRIPTOR, name):
                raise ConfigError(f"{path} google.api.http", template_text, f"{name!r} is no field of the request")
        body = rule.body
        if verb == "GET" and body and not method.client_streaming:  # google.api.http: a GET has no body
            why = "a GET carries no body (google/api/http.proto): drop body, or bind the method to POST"
            raise ConfigError(f"{path} google.api.http", template_text, why)  # a cache keyed on the path would mix them
        if method.client_streaming:  # a WebSocket: opened with GET, each text frame one whole request message
            verb, body = "GET", "*"
        yield Route(
            verb,
            template,
            upstream,
            path,
            request_type,
            response_type,
            body,
            rule.response_body,
            client_streaming=method.client_streaming,
            server_streaming=method.server_streaming,
            safe=options.idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        )


def _has_field_path(message: Any, dotted: str) -> bool:
    current: Any = message
    for part in dotted.split("."):
        if current is None or part not in current.fields_by_name:
            return False
        current = current.fields_by_name[part].message_type
    return True
