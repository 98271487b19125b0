"""A bearer token is outside input read before any signature is checked (to choose the issuer and key): whatever
arrives, reading it is a TokenRejected or a header and payload, never another exception (a 500 at the edge)."""

from __future__ import annotations

import base64
import json

from hypothesis import example, given
from hypothesis import strategies as st

from meshlet.auth.jwt import TokenRejected, read_unverified


def segment(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
token_like = st.one_of(
    st.text(max_size=60),
    st.tuples(json_values, json_values, st.text(max_size=8)).map(lambda t: f"{segment(t[0])}.{segment(t[1])}.{t[2]}"),
    st.lists(st.sampled_from(["e30", "eyJ", ".", "=", "%", "\u00e9", "AA", "_-", "=="]), max_size=12).map("".join),
)


@given(token_like)
@example("e30.e30.")
@example("e30.e30")
@example("....")
@example("\u00e9.\u00e9.\u00e9")
@example("W10.W10.x")  # [] and []: JSON, but no objects
@example(base64.urlsafe_b64encode(b"[" * 5000).decode() + ".e30.x")  # nested past the JSON parser's recursion
def test_reading_a_token_is_a_rejection_or_two_objects(token: str) -> None:
    try:
        header, payload = read_unverified(token)
    except TokenRejected:
        return
    assert isinstance(header, dict)
    assert isinstance(payload, dict)
