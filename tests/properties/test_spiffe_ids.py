"""SPIFFE IDs, read from every peer certificate's URI SAN: any text parses or raises InvalidSpiffeId, and an
identity printed and read again is the same identity."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from meshlet.security.identity import MAX_URI_BYTES, InvalidSpiffeId, SpiffeId
from tests.properties.outcome import attempt

segments = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and "/" not in s
)
trust_domains = st.from_regex(r"[a-z0-9._-]{1,20}", fullmatch=True)
partitions = st.one_of(st.just(""), st.just("default"), segments)


@given(trust_domains, segments, segments, segments, partitions)
@example("td", "ns", "dc", "svc", "default")  # printed /ap/default/, read back as partition "": not equal
def test_an_identity_round_trips_through_its_uri(td: str, ns: str, dc: str, svc: str, partition: str) -> None:
    identity = SpiffeId(td, ns, dc, svc, partition)
    assert SpiffeId.parse(identity.uri) == identity
    assert SpiffeId.parse(identity.uri).uri == identity.uri


uri_like = st.builds(
    lambda scheme, parts: scheme + "/".join(parts),
    st.sampled_from(["spiffe://", "spiffe://td", "spiffe://td/", "http://", ""]),
    st.lists(st.one_of(st.sampled_from(["ns", "dc", "svc", "ap", "default", "%", "%2F", "%ff", "%2e", ".", ""]),
                       st.text(max_size=4)), max_size=8),
)  # fmt: skip


@given(st.one_of(uri_like, st.text(max_size=40)))
@example("spiffe://td/ns/\ud800/dc/dc1/svc/web")  # a lone surrogate: UnicodeEncodeError from the length check
@example("spiffe://td/ns/%C3/dc/dc1/svc/web")
@example("spiffe://td/ns/" + "n" * MAX_URI_BYTES + "/dc/dc1/svc/web")
def test_any_text_parses_or_raises_invalid_spiffe_id(uri: str) -> None:
    outcome = attempt(lambda: SpiffeId.parse(uri), InvalidSpiffeId)
    if outcome.refused:
        assert "SPIFFE ID" in str(outcome.error)
    else:
        assert outcome.value is not None
        assert SpiffeId.parse(outcome.value.uri) == outcome.value
