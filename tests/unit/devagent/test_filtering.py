"""``?filter=`` expressions as Consul's go-bexpr reads them, over the JSON the dev agent renders."""

from __future__ import annotations

from typing import Any

import pytest

from meshlet.devagent.api.common import ConsulError, apply_filter
from meshlet.devagent.filtering import FilterError, compile_filter

REDIS: dict[str, Any] = {
    "ID": "redis1",
    "Service": "redis",
    "Tags": ["primary", "production"],
    "Meta": {"env": "qa", "team-name": "cache", "empty": ""},
    "Port": 8080,
    "Address": "",
    "TaggedAddresses": {},
    "Weights": {"Passing": 1, "Warning": 1},
    "EnableTagOverride": False,
    "Proxy": None,
    "Kind": "",
}

WEB_NODE: dict[str, Any] = {
    "Node": {"Node": "node-1", "Meta": {"os": "linux"}},
    "Service": {"Service": "web", "Tags": ["v2"], "Meta": {"version": "2"}, "Port": 9090},
    "Checks": [
        {"CheckID": "serfHealth", "Status": "passing", "ServiceTags": []},
        {"CheckID": "service:web", "Status": "critical", "ServiceTags": ["v2"]},
    ],
}


def matches(expression: str, item: Any = REDIS) -> bool:
    return compile_filter(expression)(item)


# ------------------------------------------------------------------------------------------ operators


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('Service == "redis"', True),
        ('Service == "Redis"', False),
        ('Meta.env == "qa"', True),
        ('Service != "redis"', False),
        ('Meta.env != "production"', True),
        ('Address == ""', True),
    ],
)
def test_equality_compares_the_selected_string(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("Address is empty", True),
        ("Tags is empty", False),
        ("TaggedAddresses is empty", True),
        ("Meta.empty is empty", True),
        ("Proxy is empty", True),
        ("Service is not empty", True),
        ("TaggedAddresses is not empty", False),
        ("Meta is not empty", True),
    ],
)
def test_is_empty_holds_for_empty_strings_lists_maps_and_null(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('"primary" in Tags', True),
        ('"prim" in Tags', False),
        ('Tags contains "production"', True),
        ('"env" in Meta', True),
        ('Meta contains "qa"', False),
        ('"edi" in Service', True),
        ('Service contains "redis"', True),
        ('"primary" not in Tags', False),
        ('Tags not contains "canary"', True),
        ('Service not contains "mysql"', True),
    ],
)
def test_in_and_contains_test_list_elements_map_keys_and_substrings(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('Service matches "^re"', True),
        ('Service matches "dis"', True),
        ('Service matches "^dis"', False),
        ('ID matches "redis[0-9]+$"', True),
        ('Service not matches "^re"', False),
        ('Service not matches "^my"', True),
    ],
)
def test_matches_searches_with_an_unanchored_regular_expression(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


# ------------------------------------------------------------------------------------------ values


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("Port == 8080", True),
        ('Port == "8080"', True),
        ('Port == "0x1f90"', True),
        ("Port != 8081", True),
        ("Port == 8080.5", False),
        ("Weights.Passing == 1", True),
        ("Port == -8080", False),
    ],
)
def test_numbers_compare_with_json_numbers_whether_quoted_or_not(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


def test_floats_compare_as_floats() -> None:
    assert matches("Ratio == 0.5", {"Ratio": 0.5})
    assert matches('Ratio == "5e-1"', {"Ratio": 0.5})


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("EnableTagOverride == false", True),
        ('EnableTagOverride == "false"', True),
        ("EnableTagOverride == F", True),
        ("EnableTagOverride == 0", True),
        ("EnableTagOverride == true", False),
        ("EnableTagOverride != True", True),
        ('EnableTagOverride == "no"', False),
    ],
)
def test_booleans_accept_go_parse_bool_spellings(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


def test_list_membership_reads_the_value_in_each_elements_type() -> None:
    item = {"Ports": [80, 443], "Flags": [True], "Names": ["80"]}
    assert matches("443 in Ports", item)
    assert matches('"443" in Ports', item)
    assert matches("true in Flags", item)
    assert matches("80 in Names", item)
    assert not matches("8080 in Ports", item)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('Port == "http"', False),
        ('Port != "http"', True),
        ('Tags == "primary"', False),
        ('Meta == "qa"', False),
        ('Port matches "80"', False),
        ('Port contains "8"', False),
        ("Port is empty", False),
    ],
)
def test_a_type_mismatch_is_no_match_rather_than_an_error(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


def test_bare_words_are_values() -> None:
    assert matches("Service == redis")
    assert matches("primary in Tags")
    assert matches("Meta.env == qa")
    assert not matches("canary in Tags")


def test_raw_strings_keep_backslashes() -> None:
    assert matches(r"ID matches `^redis\d$`")
    assert matches(r"Path == `C:\new`", {"Path": "C:\\new"})


@pytest.mark.parametrize(
    ("literal", "text"),
    [
        (r'"a\nb"', "a\nb"),
        (r'"tab\there"', "tab\there"),
        (r'"say \"hi\""', 'say "hi"'),
        (r'"back\\slash"', "back\\slash"),
        (r'"\x41\101"', "AA"),
        (r'"caf\u00e9"', "café"),
        (r'"\U0001F600"', "\U0001f600"),
        ('"café"', "café"),
    ],
)
def test_double_quoted_strings_decode_go_escapes(literal: str, text: str) -> None:
    assert matches(f"Value == {literal}", {"Value": text})


# ------------------------------------------------------------------------------------------ selectors


def test_index_syntax_reaches_keys_that_are_not_identifiers() -> None:
    assert matches('Meta["team-name"] == "cache"')
    assert matches('Meta[ "env" ] == "qa"')
    assert matches('Service.Meta["version"] == "2"', WEB_NODE)
    assert matches('Meta["a.b"] == "x"', {"Meta": {"a.b": "x"}})


def test_selectors_follow_json_keys_case_sensitively() -> None:
    assert matches('Meta.env == "qa"')
    assert not matches('meta.env == "qa"')
    assert not matches('Meta.ENV == "qa"')


def test_nested_selectors_reach_into_embedded_objects() -> None:
    assert matches('Node.Node == "node-1" and Node.Meta.os == "linux"', WEB_NODE)
    assert matches('Service.Tags contains "v2" and Service.Port == 9090', WEB_NODE)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('Checks.Status == "critical"', True),
        ('Checks.Status == "warning"', False),
        ('Checks.Status != "passing"', True),
        ('Checks.CheckID matches "^service:"', True),
        ('"v2" in Checks.ServiceTags', True),
        ("Checks.ServiceTags is empty", True),
        ("Checks.Missing is empty", True),
    ],
)
def test_a_selector_crossing_a_list_matches_when_any_element_does(expression: str, expected: bool) -> None:
    assert matches(expression, WEB_NODE) is expected


def test_inequality_across_a_list_is_false_only_when_every_element_equals() -> None:
    all_passing = {"Checks": [{"Status": "passing"}, {"Status": "passing"}]}
    assert not matches('Checks.Status != "passing"', all_passing)
    assert matches('not Checks.Status != "passing"', all_passing)


def test_crossing_an_empty_list_matches_nothing() -> None:
    no_checks: dict[str, Any] = {"Checks": []}
    for expression in ('Checks.Status == "x"', 'Checks.Status != "x"', "Checks.Status is empty"):
        assert not matches(expression, no_checks), expression


def test_a_numeric_step_indexes_a_list() -> None:
    assert matches('Tags.0 == "primary"')
    assert matches('Checks.1.Status == "critical"', WEB_NODE)
    assert matches("Tags.7 is empty")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('Meta.missing == "x"', False),
        ('Meta.missing != "x"', True),
        ("Meta.missing is empty", True),
        ("Meta.missing is not empty", False),
        ('"x" in Meta.missing', False),
        ('"x" not in Meta.missing', True),
        ('Meta.missing contains "x"', False),
        ('Meta.missing not contains "x"', True),
        ('Meta.missing matches ".*"', False),
        ('Meta.missing not matches ".*"', True),
        ('Proxy.DestinationServiceName == "x"', False),
        ("Proxy.DestinationServiceName is empty", True),
        ('Port.Number == "x"', False),
    ],
)
def test_a_missing_field_equals_nothing_and_is_empty(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


# ------------------------------------------------------------------------------------------ logic


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('Service == "redis" and Port == 8080', True),
        ('Service == "redis" and Port == 1', False),
        ('Service == "x" or Port == 8080', True),
        ('Service == "x" or Port == 1', False),
        ('not Service == "x"', True),
        ('not not Service == "redis"', True),
    ],
)
def test_and_or_not_combine_matches(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # and binds tighter than or: T or (F and F)
        ('Service == "redis" or Port == 1 and Port == 2', True),
        # not binds tighter than and: (not F) and T
        ('not Port == 1 and Service == "redis"', True),
        # the documented example: (A and (not B)) or C with A=T, B=T, C=F
        ('Service == "redis" and not Port == 8080 or Port == 1', False),
    ],
)
def test_not_binds_tighter_than_and_which_binds_tighter_than_or(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


def test_parentheses_override_precedence() -> None:
    assert not matches('(Service == "redis" or Port == 1) and Port == 2')
    assert matches('not (Service == "x" and Port == 8080)')
    assert matches('((Service == "redis"))')


def test_whitespace_between_tokens_is_free() -> None:
    assert matches('Service=="redis"')
    assert matches('\n\tService == "redis"\r\n  and\n(Port == 8080)  ')


def test_a_field_may_be_named_not() -> None:
    assert matches('not == "yes"', {"not": "yes"})


def test_filtering_a_listing_keeps_the_matching_elements() -> None:
    qa = {"ID": "redis3", "Service": "redis", "Tags": ["primary", "qa"], "Meta": {"env": "qa"}}
    production = {"ID": "redis2", "Service": "redis", "Tags": ["secondary"], "Meta": {"env": "production"}}
    assert apply_filter([qa, production], 'Meta.env == "qa"') == [qa]
    assert apply_filter([qa, production], "") == [qa, production]


def test_a_compiled_filter_is_reused_for_the_same_expression() -> None:
    assert compile_filter('Service == "redis"') is compile_filter('Service == "redis"')


# ------------------------------------------------------------------------------------------ syntax errors


@pytest.mark.parametrize(
    ("expression", "position", "message"),
    [
        ("", "1:1 (0)", 'expected a selector, a quoted value or "(", found the end of the expression'),
        ("Service ==", "1:11 (10)", 'expected a value after "=="'),
        ('Service "redis"', "1:9 (8)", "expected an operator"),
        ("Port > 5", "1:6 (5)", "expected an operator (==, !=, is empty"),
        ('Service == "redis', "1:12 (11)", "unterminated string literal"),
        ("Service == `redis", "1:12 (11)", "unterminated string literal"),
        ('Service == "a\\qb"', "1:14 (13)", "invalid escape sequence '\\\\q'"),
        ('Service == "\\u12"', "1:13 (12)", "invalid escape sequence"),
        ('Service == "a\nb"', "1:14 (13)", "newline in string literal"),
        ('(Service == "redis"', "1:20 (19)", 'expected ")" to close the "(" at 1:1 (0) (unmatched parentheses)'),
        ('Service == "redis")', "1:19 (18)", 'expected "and", "or" or the end of the expression, found \')\''),
        ('Service == "redis" Port', "1:20 (19)", 'expected "and", "or" or the end of the expression'),
        ('Service == "redis" and', "1:23 (22)", "expected a selector, a quoted value"),
        ('or Service == "redis"', "1:1 (0)", "expected a selector, a quoted value"),
        ("not", "1:4 (3)", "expected a selector, a quoted value"),
        ("Port == 80a", "1:9 (8)", "invalid number literal"),
        ("Meta[env] == 1", "1:6 (5)", 'expected a quoted key after "[" (invalid index)'),
        ('Meta["env" == 1', "1:12 (11)", 'expected "]" to close the index expression'),
        ("Meta. env == 1", "1:7 (6)", 'expected a field name right after "."'),
        ('"x" in', "1:7 (6)", 'expected a selector after "in" (invalid selector)'),
        ('"x" in "y"', "1:8 (7)", "invalid selector"),
        ('"x" == Service', "1:5 (4)", 'expected "in" or "not in" after a value'),
        ("Tags is full", "1:9 (8)", 'expected "empty" or "not empty" after "is"'),
        ('Tags not equals "x"', "1:10 (9)", 'expected "in", "contains" or "matches" after "not"'),
        ('Service matches "("', "1:17 (16)", "invalid regular expression '('"),
        ('Service == "x" or\n  (Port == 1', "2:13 (30)", 'to close the "(" at 2:3 (20)'),
    ],
)
def test_a_syntax_error_names_the_position_and_what_was_expected(expression: str, position: str, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(expression)
    assert str(caught.value).startswith(f"{position}: ")
    assert message in str(caught.value)


def test_a_bad_filter_is_a_server_error_as_in_consul() -> None:
    with pytest.raises(ConsulError) as caught:
        apply_filter([REDIS], "Service ==")
    assert caught.value.status == 500
    assert caught.value.reason.startswith("Failed to create boolean expression evaluator: 1:11 (10): expected a value")
