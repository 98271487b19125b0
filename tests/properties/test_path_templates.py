"""The edge's route templates match a path in one regular expression where they can (no ``**``, each variable one
segment, no percent-escape in the path): that shortcut must bind exactly what the segment walk binds, on every
path a client can send, or a request would reach another method than the route table says."""

from __future__ import annotations

import dataclasses

from hypothesis import example, given
from hypothesis import strategies as st

from meshlet_edge.templates import PathTemplate, parse

TEMPLATES = [
    "/v1/echo/{message}",
    "/v1/orders/{order_id}",
    "/v1/orders/{order_id}:watch",
    "/v1/orders/{order_id}/items/{item.sku}",
    "/v1/*/things/{name}",
    "/v1/fixed/{name=pinned}",
    "/v1/files/{path=**}",
    "/v1/{name=shelves/*}/books",
    "/v1:batch",
    "/a.b/c-d_e~f",
]
path = st.lists(
    st.sampled_from(["/", "v1", "echo", "orders", "items", "things", "fixed", "pinned", "files", "shelves", "books"])
    | st.sampled_from([":", ":watch", ":batch", "a.b", "c-d_e~f", "x", "", "%2F", "%65cho", " ", "+", "\u00e9", "//"]),
    max_size=8,
).map("".join)


def walk_only(template: PathTemplate) -> PathTemplate:
    return dataclasses.replace(template, plain=None)


@given(st.sampled_from(TEMPLATES), path)
@example("/v1/echo/{message}", "/v1/echo/hi")
@example("/v1/orders/{order_id}:watch", "/v1/orders/a:b:watch")
@example("/v1/orders/{order_id}", "/v1/orders/a:watch")
@example("/v1/echo/{message}", "/v1/echo/hi/")
@example("/v1/echo/{message}", "/v1/echo/")  # an empty segment binds nothing
@example("/v1/*/things/{name}", "/v1//things/x")
@example("/v1/fixed/{name=pinned}", "/v1/fixed/pinned")
@example("/a.b/c-d_e~f", "/a.b/c-d_e~f")
@example("/a.b/c-d_e~f", "/aXb/c-d_e~f")  # an escaped "." must not match any character
def test_the_one_expression_binds_what_the_segment_walk_binds(source: str, raw_path: str) -> None:
    template = parse(source)
    assert template.match(raw_path) == walk_only(template).match(raw_path)
    candidate = "/" + raw_path.lstrip("/")
    assert template.match(candidate) == walk_only(template).match(candidate)


def test_templates_the_walk_must_serve_have_no_expression() -> None:
    assert parse("/v1/files/{path=**}").plain is None
    assert parse("/v1/{name=shelves/*}/books").plain is None
    assert parse("/v1/echo/{message}").plain is not None
