"""The canonical method path check every listener runs before its stages (METHOD_PATH_INVALID): it agrees with
gRPC's grammar (``/`` a protobuf full name ``/`` an identifier), and with the method patterns the config
accepts, so that every rule names paths that can arrive and every path that arrives can be named."""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from meshlet.call import is_canonical_method
from meshlet.config import load_config
from meshlet.errors import ConfigError
from tests.properties.outcome import attempt

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
REFERENCE = re.compile(rf"/{IDENT}(?:\.{IDENT})*/{IDENT}")
path_like = st.lists(
    st.sampled_from(["/", ".", "..", "a", "Z", "_", "0", "pkg", "Svc", "M", "%2F", "%6F", " ", "\u00e9", "\n"]),
    max_size=10,
).map("".join)


@given(st.one_of(path_like, st.text(max_size=20)))
@example("/pkg..Svc/M")  # no protobuf name has an empty part: no rule could name it
@example("/pkg.Svc./M")
@example("/pkg.Svc/M/")
@example("pkg.Svc/M")
@example("/pkg.Svc/Dr%6Fp")
@example("/pkg.Svc/M\n")
def test_a_path_is_canonical_exactly_when_grpc_grammar_says_so(path: str) -> None:
    assert is_canonical_method(path) == bool(REFERENCE.fullmatch(path))


@given(st.one_of(path_like, st.text(max_size=20)))
@example("/pkg..Svc/M")
@example("*")  # every method
@example("/pkg.Svc/*")  # every method of a service
@example("/pkg..Svc/*")
def test_a_canonical_path_is_a_method_pattern_the_config_accepts_and_nothing_else_is(path: str) -> None:
    """Besides canonical paths, a pattern may be ``*`` or a canonical service's ``/pkg.Service/*``."""
    rule = {"from": "a", "to": "b", "methods": [path], "action": "allow"}
    outcome = attempt(lambda: load_config(None, env={}, overrides={"authz": {"rules": [rule]}}), ConfigError)
    wildcard = path == "*" or (path.endswith("/*") and is_canonical_method(path[:-1] + "M"))
    assert (not outcome.refused) == (is_canonical_method(path) or wildcard)
