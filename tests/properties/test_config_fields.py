"""Config values an operator writes (durations, host:port, Consul addresses, method patterns) and the whole
loader: any text gives a value or the documented error, never another exception; what is accepted agrees with
a plain reference model of the documented grammar; printing and reading again changes nothing."""

from __future__ import annotations

import ipaddress
import re
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshlet.config import load_config, normalise_consul_address, parse_duration, split_host_port
from meshlet.errors import ConfigError
from tests.properties.outcome import attempt

UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
ASCII_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
ASCII_PART = re.compile(rf"({ASCII_NUMBER})(ns|us|µs|ms|s|m|h)")

duration_alphabet = st.sampled_from([*"0123456789.", "ns", "us", "µs", "ms", "s", "m", "h", " ", "-", "e", "\u0661"])
duration_like = st.lists(duration_alphabet, max_size=12).map("".join)


def reference_duration(text: str) -> float | None:
    """The documented grammar, ASCII digits only: a bare number of seconds, or number+unit pairs."""
    text = text.strip()
    if re.fullmatch(ASCII_NUMBER, text):
        return float(text)
    if text and re.fullmatch(rf"(?:{ASCII_NUMBER}(?:ns|us|µs|ms|s|m|h))+", text):
        return sum(float(n) * UNITS[u] for n, u in ASCII_PART.findall(text))
    return None


@given(st.one_of(duration_like, st.text(max_size=20)))
@example("\u0661s")  # an Arabic-Indic 1: \d matched it and float() read it, so it was one second
@example("1e3s")
def test_a_duration_is_read_as_the_documented_grammar_says_or_refused(text: str) -> None:
    expected = reference_duration(text)
    outcome = attempt(lambda: parse_duration(text), ValueError)
    if outcome.refused:
        assert "must be a duration" in str(outcome.error)
        assert expected is None or expected == float("inf")
    else:
        assert expected is not None
        assert outcome.value == pytest.approx(expected)


@given(st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.binary(max_size=8), st.lists(st.text())))
def test_a_duration_of_another_type_is_refused_with_value_error(value: object) -> None:
    outcome = attempt(lambda: parse_duration(value), ValueError)
    if not outcome.refused:
        assert isinstance(value, int | float)
        assert not isinstance(value, bool)
        assert outcome.value == float(value)  # seconds as a float: 2**53 + 1 is 2**53


hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,20}(?:\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)
ports = st.integers(1, 65535)


@given(st.one_of(hostnames, st.ip_addresses(v=4).map(str)), ports)
def test_host_port_round_trips(host: str, port: int) -> None:
    assert split_host_port(f"{host}:{port}") == (host, port)


@given(st.ip_addresses(v=6).map(str), ports)
def test_an_ipv6_host_port_round_trips_in_brackets_and_is_refused_without(host: str, port: int) -> None:
    assert split_host_port(f"[{host}]:{port}") == (host, port)
    with pytest.raises(ValueError, match="IPv6 host in brackets"):
        split_host_port(f"{host}:{port}")


@given(st.text(max_size=30))
@example("host:²")  # a superscript two is a digit to str.isdigit() but not to int(): "invalid literal for int()"
@example("host:\u0661\u0662")  # Arabic-Indic digits: int() read them as port 12
@example("host:0080")
def test_host_port_is_parsed_or_refused_in_our_words(text: str) -> None:
    outcome = attempt(lambda: split_host_port(text), ValueError)
    if outcome.refused:
        assert str(outcome.error).startswith("must be host:port")
        return
    assert outcome.value is not None
    host, port = outcome.value
    port_text = text.strip().rpartition(":")[2]
    assert re.fullmatch(r"[0-9]+", port_text)
    assert int(port_text) == port
    assert 1 <= port <= 65535
    assert host
    assert not any(c.isspace() for c in host)


consul_addresses = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda scheme, host, port: f"{scheme}{host}{port}",
        st.sampled_from(["", "http://", "https://", "HTTP://", "ftp://"]),
        st.one_of(hostnames, st.ip_addresses().map(str), st.ip_addresses(v=6).map(lambda a: f"[{a}]")),
        st.one_of(st.just(""), ports.map(lambda p: f":{p}"), st.text(max_size=5).map(lambda t: f":{t}")),
    ),
)


@given(consul_addresses)
@example("fd00::1:8500")
@example("[::1]:²")
@example("[0:0:0:0:0:0:0:]")  # brackets holding no IPv6 address, once accepted unchecked
@example("http://[::;]")
@example("[::1]x")
def test_a_consul_address_normalises_once_for_all_or_is_refused_in_our_words(text: str) -> None:
    outcome = attempt(lambda: normalise_consul_address(text), ValueError)
    if outcome.refused:
        assert str(outcome.error).startswith("must be host:port")
        return
    address = outcome.value
    assert address is not None
    assert normalise_consul_address(address) == address
    scheme, _, authority = address.partition("://")
    assert scheme in ("http", "https")
    host = authority.rpartition("]")[0].lstrip("[") if authority.startswith("[") else None
    if host is not None:
        ipaddress.IPv6Address(host)


IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
REFERENCE_METHOD = re.compile(rf"/{IDENT}(?:\.{IDENT})*/(?:\*|{IDENT})|\*")
method_like = st.lists(
    st.sampled_from(["/", ".", "*", "a", "Z", "_", "0", "é", "pkg", "Svc", "M", " ", "-"]), max_size=10
).map("".join)


@given(st.one_of(method_like, st.text(max_size=15)))
@example("/é.Svc/M")  # \w is Unicode: a pattern no protobuf name can ever match was accepted
@example("/pkg..Svc/M")
@example("/pkg.Svc./M")
def test_a_method_pattern_is_accepted_exactly_when_the_protobuf_grammar_allows_it(pattern: str) -> None:
    rule = {"from": "a", "to": "b", "methods": [pattern], "action": "allow"}
    outcome = attempt(lambda: load_config(None, env={}, overrides={"authz": {"rules": [rule]}}), ConfigError)
    if isinstance(outcome.error, ConfigError):
        assert outcome.error.path == "authz.rules[0].methods[0]", outcome.error
        assert not REFERENCE_METHOD.fullmatch(pattern)
    else:
        assert REFERENCE_METHOD.fullmatch(pattern)
        assert outcome.value is not None
        assert list(outcome.value.authz.rules[0].methods) == [pattern]


FIELDS = [
    "service__name", "service__check_ttl", "consul__address", "sidecar__app", "sidecar__inbound",
    "sidecar__outbound", "sidecar__admin", "upstream_defaults__timeout", "upstream_defaults__retry",
    "authz__default", "authz__rules", "tls__source", "sidecar__routes", "telemetry__otlp_endpoint", "nope__x", "a",
]  # fmt: skip
env_values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["[", "{", "[1, {a: b}]", "{a: [1, 2]}", "{[1]: 2}", "null", "&a [*a]", "!!python/none"]),
    st.sampled_from([3, 40]).map(lambda depth: "[" * depth + "]" * depth),  # deeper ones: the @example, ~1 s each
)


@settings(max_examples=100)
@given(st.dictionaries(st.sampled_from(FIELDS).map(lambda f: "MESHLET_" + f.upper()), env_values, max_size=3))
@example({"MESHLET_SIDECAR__ROUTES": "[" * 2000 + "]" * 2000})  # YAML's composer recursed to RecursionError
@example({"MESHLET_A": "x", "MESHLET___": "y"})
def test_any_environment_loads_or_raises_config_error(env: dict[str, str]) -> None:
    attempt(lambda: load_config(None, env=env), ConfigError)


yaml_documents = st.one_of(
    st.text(max_size=60),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(string.printable, max_size=8)),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.sampled_from(["service", "name", "sidecar", "app", "authz", "rules", "x"]), children),
        ),
        max_leaves=10,
    ).map(repr),
)


@given(yaml_documents)
@example("[" * 3000)  # deep flow nesting
@example("a: &x [*x]")
@example("!!binary AAAA")
def test_any_config_file_loads_or_raises_config_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "meshlet.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    attempt(lambda: load_config(path, env={}), ConfigError)
