"""The edge's path templates (google/api/http.proto grammar): what they match, what they bind, what they refuse."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlet_edge.templates import PathTemplate, TemplateError, fill, parse


@pytest.mark.parametrize(
    ("template", "path", "bound"),
    [
        ("/v1/inventory/items/{sku}", "/v1/inventory/items/sku-tea", {"sku": "sku-tea"}),
        ("/v1/inventory/items/{sku}", "/v1/inventory/items/a%20b%2Fc", {"sku": "a b/c"}),  # one segment: all decoded
        ("/v1/{name=shelves/*}/books", "/v1/shelves/s1/books", {"name": "shelves/s1"}),
        ("/v1/{name=files/**}", "/v1/files/a/b%2Fc/d", {"name": "files/a/b%2Fc/d"}),  # several: %2F kept
        ("/v1/{name=files/**}", "/v1/files/caf%C3%A9/a%2fb", {"name": "files/café/a%2fb"}),  # UTF-8 decoded whole
        ("/v1/items/{sku}", "/v1/items/%FF", {"sku": "\udcff"}),  # not UTF-8: kept apart, for not_utf8 to refuse
        ("/v1/{a.b}/x/{c}", "/v1/1/x/2", {"a.b": "1", "c": "2"}),
        ("/v1/items/{sku}:reserve", "/v1/items/sku-1:reserve", {"sku": "sku-1"}),
        ("/v1/orders", "/v1/orders", {}),
        ("/v1/*/list", "/v1/anything/list", {}),
    ],
)
def test_a_template_binds_its_variables(template: str, path: str, bound: dict[str, str]) -> None:
    assert parse(template).match(path) == bound


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/inventory/items/{sku}", "/v1/inventory/items"),
        ("/v1/inventory/items/{sku}", "/v1/inventory/items/"),
        ("/v1/inventory/items/{sku}", "/v1/inventory/items/a/b"),
        ("/v1/items/{sku}:reserve", "/v1/items/sku-1"),
        ("/v1/items/{sku}:reserve", "/v1/items/sku-1:release"),
        ("/v1/{name=shelves/*}/books", "/v1/racks/s1/books"),
        ("/v1/orders", "/v2/orders"),
        ("/v1/orders", "v1/orders"),
    ],
)
def test_a_template_refuses_other_paths(template: str, path: str) -> None:
    assert parse(template).match(path) is None


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("v1/orders", "must start with '/'"),
        ("/v1/{name", "'{' without '}'"),
        ("/v1/name}", "'}' without '{'"),
        ("/v1/{a={b}}", "do not nest"),
        ("/v1/{1st}", "not a field path"),
        ("/v1/**/x", "'**' may only be the last"),
        ("/v1//x", "is empty"),
        ("/v1/{a}/{a}", "appears twice"),
    ],
)
def test_a_broken_template_is_refused_naming_the_problem(template: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(problem)) as refused:
        parse(template)
    assert repr(template) in str(refused.value)


_IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
_LITERAL = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,8}", fullmatch=True)


@st.composite
def templates(draw: st.DrawFn) -> PathTemplate:
    parts = draw(st.lists(st.one_of(_LITERAL, _IDENT.map(lambda name: "{" + name + "}")), min_size=1, max_size=5))
    names = [p for p in parts if p.startswith("{")]
    if len(set(names)) != len(names):
        parts = [p for p in parts if not p.startswith("{")] or ["v1"]
    verb = draw(st.one_of(st.none(), _LITERAL.filter(lambda v: "." not in v)))
    return parse("/" + "/".join(parts) + (f":{verb}" if verb else ""))


@given(templates(), st.data())
def test_any_value_filled_into_a_template_is_bound_back_unchanged(template: PathTemplate, data: st.DataObject) -> None:
    values = {name: data.draw(st.text(min_size=1, max_size=12)) for name in template.variables}
    assert template.match(fill(template, values)) == values


@given(templates(), st.text(max_size=20))
def test_matching_never_raises_on_any_path(template: PathTemplate, path: str) -> None:
    found = template.match("/" + path)
    assert found is None or set(found) == set(template.variables)


def test_a_many_segment_variable_decodes_utf8_whole_and_keeps_an_escaped_slash() -> None:
    # each escape was once decoded on its own: "%C3%A9" became two U+FFFD
    bound = parse("/v1/{name=shelves/*}").match("/v1/shelves/caf%C3%A9%2fbar")
    assert bound == {"name": "shelves/café%2fbar"}  # the escaped slash kept as it came


def test_an_escape_that_is_not_utf8_is_kept_as_a_surrogate_for_transcoding_to_refuse() -> None:
    assert parse("/v1/{name}").match("/v1/ord%E9") == {"name": "ord\udce9"}
