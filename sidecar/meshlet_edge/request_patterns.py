"""Which requests an edge policy rule names (``edge.auth.routes``, ``edge.cache.routes``, ...): ``"GET /v1/orders/**"``
(an HTTP verb or ``*``, and a path pattern in the grammar of the routes' own templates: literals, ``*`` for one
segment, ``**`` for any number, last) or a gRPC method pattern (``/pkg.Service/Method``, ``/pkg.Service/*``).

A path pattern is matched by the same code, against the same raw path, that chose the route
(meshlet_edge.templates), so a request cannot be routed one way and judged another: ``/v1/%6Frders/x`` is either
both the orders route and ``/v1/orders/*``, or neither. For the same reason a ``GET`` pattern names HEAD requests
too (as nginx's ``limit_except GET`` allows HEAD): a HEAD is routed to the GET's method and answers the GET's
headers, so it must pass the same auth, limits and cache rules (a ``HEAD`` pattern names HEAD only).
Compiled once at start; pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from meshlet.errors import ConfigError
from meshlet_edge.templates import PathTemplate, TemplateError, parse

_VERB = re.compile(r"^(\*|[A-Z]+)$")
# A service by its full name, package included (so that "/v1/orders" is never read as a method).
_METHOD = re.compile(r"^/[A-Za-z_]\w*(\.[A-Za-z_]\w*)+/([A-Za-z_]\w*|\*)$", re.ASCII)
EXAMPLES = '"GET /v1/orders/**", "* /v1/orders/*" or "/shop.orders.v1.Orders/*"'


@dataclass(frozen=True, slots=True)
class RequestPattern:
    source: str
    verb: str | None  # None: every verb
    path: PathTemplate | None  # None: a gRPC method pattern
    method: str  # "/pkg.Service/Method", "/pkg.Service/" (every method of it), or "" for a path pattern

    def matches(self, verb: str, raw_path: str, method: str) -> bool:
        """Whether a request (its HTTP verb, its raw path as routed, the gRPC method its route calls) is named here."""
        if self.path is None:
            return method.startswith(self.method) if self.method.endswith("/") else method == self.method
        verbs_match = self.verb is None or self.verb == verb or (verb == "HEAD" and self.verb == "GET")
        return verbs_match and self.path.match(raw_path) is not None


def parse_pattern(text: str) -> RequestPattern:
    """`text` as a pattern; ValueError saying what is wrong."""
    text = text.strip()
    if _METHOD.match(text):
        return RequestPattern(text, None, None, text.removesuffix("*"))
    verb, _, path = text.partition(" ")
    if not _VERB.match(verb) or not path.startswith("/"):
        raise ValueError(f"must be {EXAMPLES}")
    try:
        template = parse(path.strip())
    except TemplateError as error:
        raise ValueError(f"{error}: write {EXAMPLES}") from None
    if template.variables:
        raise ValueError(f"names no fields: write * for a segment instead of {{...}}, e.g. {EXAMPLES}")
    return RequestPattern(text, None if verb == "*" else verb, template, "")


def parse_patterns(texts: Sequence[str], field: str) -> tuple[RequestPattern, ...]:
    """Every pattern of a config list (`field` names it, e.g. ``edge.cache.routes``); ConfigError naming the first bad
    one by its index."""
    found = []
    for index, text in enumerate(texts):
        try:
            found.append(parse_pattern(text))
        except ValueError as error:
            raise ConfigError(f"{field}[{index}].match", text, str(error)) from None
    return tuple(found)
