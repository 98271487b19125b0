"""The pure parts of the edge's HTTP hygiene: Accept-Encoding negotiation, gzip request bodies inflated within a
limit, Retry-After from a pushback or a RetryInfo, request ids, the headers that may be forwarded, JSON media
types, and the metadata a call upstream carries."""

from __future__ import annotations

import gzip
import re
import uuid
import zlib

import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from multidict import CIMultiDict

from meshlet.config import load_config
from meshlet.config.edge_headers import forwardable_header
from meshlet.errors import ConfigError
from meshlet_edge.bodies import BodyRefused, Inflater, is_json
from meshlet_edge.compression import choose_coding, compress
from meshlet_edge.forwarding import upstream_metadata
from meshlet_edge.request_id import request_id
from meshlet_edge.retry_after import retry_after
from meshlet_edge.transcode import BadRequest

BOTH = ("br", "gzip")


@pytest.mark.parametrize(
    ("header", "offered", "chosen"),
    [
        (None, BOTH, None),
        ("gzip", BOTH, "gzip"),
        ("gzip, br", BOTH, "br"),  # equal weights: the first offered
        ("gzip, br", ("gzip",), "gzip"),
        ("br;q=0.5, gzip;q=0.8", BOTH, "gzip"),
        ("gzip;q=0", BOTH, None),
        ("GZIP;Q=1.0", BOTH, "gzip"),
        ("x-gzip", BOTH, "gzip"),
        ("*", ("gzip",), "gzip"),
        ("*;q=0, gzip", BOTH, "gzip"),
        ("gzip;q=0, *", ("gzip",), None),  # a coding named with q=0 is refused whatever * says
        ("gzip;q=nonsense", BOTH, None),
        ("identity", BOTH, None),
        (" , ;q=1, deflate", BOTH, None),
    ],
)
def test_choose_coding_follows_accept_encoding(header, offered, chosen) -> None:
    assert choose_coding(header, offered) == chosen


def test_gzip_as_compressed_is_read_back_by_gzip() -> None:
    body = b'{"a": "' + b"tea " * 1000 + b'"}'
    packed = compress(body, "gzip")
    assert gzip.decompress(packed) == body
    assert len(packed) < len(body)


def feed_in_pieces(inflater: Inflater, data: bytes, size: int = 7) -> bytes:
    for start in range(0, len(data), size):
        inflater.feed(data[start : start + size])
    return inflater.finish()


def test_inflater_reads_one_member_and_several_fed_in_pieces() -> None:
    assert feed_in_pieces(Inflater(1000), gzip.compress(b"hello")) == b"hello"
    assert feed_in_pieces(Inflater(1000), gzip.compress(b"one ") + gzip.compress(b"two")) == b"one two"
    assert feed_in_pieces(Inflater(5), gzip.compress(b"12345")) == b"12345"  # exactly the limit


def test_inflater_refuses_a_bomb_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024), compresslevel=9)
    inflater = Inflater(1024)
    with pytest.raises(BodyRefused) as refused:
        inflater.feed(bomb)
    assert refused.value.status == 413
    assert len(inflater._out) <= 1025  # never more than the limit and the one byte that proves it passed


@pytest.mark.parametrize(
    "data",
    [b"not gzip at all", gzip.compress(b"cut short")[:-4], gzip.compress(b"x") + b"trailing garbage"],
    ids=["garbage", "truncated", "trailing-garbage"],
)
def test_inflater_refuses_what_is_not_gzip_with_400(data) -> None:
    with pytest.raises(BodyRefused) as refused:
        feed_in_pieces(Inflater(1000), data)
    assert refused.value.status == 400


def pushback_error(value: str) -> list[tuple[str, str]]:
    return [("grpc-retry-pushback-ms", value)]


def with_retry_info(seconds: int, nanos: int = 0) -> status_pb2.Status:
    status = status_pb2.Status(code=14, message="later")
    status.details.add().Pack(
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos))
    )
    return status


@pytest.mark.parametrize(
    ("trailers", "status", "header"),
    [
        ([], status_pb2.Status(), None),
        (pushback_error("1500"), status_pb2.Status(), "2"),
        (pushback_error("1000"), status_pb2.Status(), "1"),
        (pushback_error("0"), status_pb2.Status(), "0"),
        (pushback_error("-1"), status_pb2.Status(), None),  # A6: negative means "do not retry"
        (pushback_error("soon"), status_pb2.Status(), None),
        ([], with_retry_info(2, 1), "3"),
        (pushback_error("4000"), with_retry_info(1), "4"),  # the longer wins
        (None, with_retry_info(0, 500_000_000), "1"),
    ],
)
def test_retry_after_rounds_up_the_longest_wait(trailers, status, header) -> None:
    assert retry_after(trailers, status) == header


def test_a_sane_request_id_is_kept_and_another_replaced_by_a_uuid() -> None:
    assert request_id("abc-123_XYZ.=:/") == "abc-123_XYZ.=:/"
    assert request_id("x" * 128) == "x" * 128
    for insane in (None, "", "two words", "x" * 129, "tab\there", "naïve", "line\r\nbreak"):
        made = request_id(insane)
        assert uuid.UUID(made).version == 4


def test_made_request_ids_are_canonical_random_uuids() -> None:
    made = [request_id(None) for _ in range(2000)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text  # the canonical form: lowercase, dashes where uuid puts them


@pytest.mark.parametrize("name", ["X-Tenant", "accept-language", "authorization", "x_legacy.id"])
def test_headers_that_may_be_forwarded_become_lowercase_keys(name) -> None:
    assert forwardable_header(name) == name.lower()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Connection", "hop-by-hop"),
        ("Transfer-Encoding", "hop-by-hop"),
        ("TE", "hop-by-hop"),
        (":path", "pseudo"),
        ("grpc-timeout", "reserved"),
        ("X-Meshlet-Caller", "reserved"),
        ("Content-Type", "gRPC's own"),
        ("Host", "gRPC's own"),
        ("traceparent", "trace context"),
        ("x-request-id", "always goes upstream"),
        ("x-data-bin", "metadata key"),
        ("x!bang", "metadata key"),
    ],
)
def test_headers_that_may_never_be_forwarded_are_refused_saying_why(name, why) -> None:
    with pytest.raises(ValueError, match="remove it") as refused:
        forwardable_header(name)
    assert why in str(refused.value)


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        (None, True),
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/problem+json", True),
        ("text/json", False),
        ("application/x-www-form-urlencoded", False),
        ("application/jsonp", False),
        ("", False),
    ],
)
def test_json_media_types(content_type, json) -> None:
    assert is_json(content_type) is json


def test_upstream_metadata_carries_the_request_id_and_every_value_of_each_forwarded_header() -> None:
    headers = CIMultiDict([("X-Tenant", "a"), ("X-Other", "o"), ("x-tenant", " b ")])
    assert upstream_metadata(headers, ("x-tenant",), "rid") == (
        ("x-request-id", "rid"),
        ("x-tenant", "a"),
        ("x-tenant", "b"),
    )
    with pytest.raises(BadRequest) as refused:
        upstream_metadata(CIMultiDict([("X-Tenant", "\x00")]), ("x-tenant",), "rid")
    assert refused.value.field == "x-tenant"


def test_zlib_framing_is_gzip_so_any_client_reads_it() -> None:
    assert compress(b"x" * 100, "gzip")[:2] == b"\x1f\x8b"
    assert zlib.decompress(compress(b"y" * 100, "gzip"), 16 + zlib.MAX_WBITS) == b"y" * 100


def test_the_edges_http_fields_default_and_refuse_what_is_wrong(tmp_path) -> None:
    config = load_config(None)
    assert (config.edge.forward_headers, config.edge.max_body_bytes) == ((), 1024 * 1024)
    assert config.edge.compression.min_bytes == 1024
    assert config.upstream("anything").compression == "none"
    path = tmp_path / "meshlet.yaml"
    for body, field in (
        ("edge: {forward_headers: [x-tenant, Upgrade]}", "edge.forward_headers[1]"),
        ("edge: {max_body_bytes: 0}", "edge.max_body_bytes"),
        ("edge: {compression: {min_bytes: -1}}", "edge.compression.min_bytes"),
        ("upstreams: {orders: {compression: brotli}}", "upstreams.orders.compression"),
    ):
        path.write_text(body)
        with pytest.raises(ConfigError, match=re.escape(field)):
            load_config(path)
    path.write_text("edge: {forward_headers: [X-Tenant]}\nupstream_defaults: {compression: gzip}\nupstreams: {a: {}}")
    loaded = load_config(path)
    assert loaded.edge.forward_headers == ("x-tenant",)
    assert loaded.upstreams["a"].compression == "gzip"
