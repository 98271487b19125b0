"""protovalidate's violations as a google.rpc.BadRequest: the field path as the caller wrote the request, the rule's
id as the reason, protovalidate's words as the description; and the status message that sums them up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import protovalidate
import pytest
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.rpc import error_details_pb2, status_pb2
from protobuf import Oneof

from meshlet.errors import DETAILS_KEY, ErrorReason, RequestInvalid, error_info
from meshlet.validation import (
    RequestValidator,
    bad_request,
    field_path,
    has_constraints,
    parse_as,
    summary,
    typed,
)
from meshlet_shop_api.inventory.v1 import inventory_pb2
from meshlet_shop_api.orders.v1 import orders_pb2


def element(name: str, key: str | None = None, value: object = None) -> protovalidate.FieldPathElementPb:
    subscript: Any = Oneof(key, value) if key is not None else None
    return protovalidate.FieldPathElementPb(field_name=name, subscript=subscript)


@pytest.mark.parametrize(
    ("elements", "expected"),
    [
        ([], ""),
        ([element("sku")], "sku"),
        ([element("items", "index", 0), element("sku")], "items[0].sku"),
        ([element("labels", "string_key", 'env "x"')], 'labels["env \\"x\\""]'),
        ([element("flags", "bool_key", True)], "flags[true]"),
        ([element("by_id", "int_key", -3), element("name")], "by_id[-3].name"),
        ([element("by_id", "uint_key", 7)], "by_id[7]"),
    ],
)
def test_field_paths_read_as_the_request_was_written(elements, expected: str) -> None:
    assert field_path(elements) == expected


def test_every_violation_becomes_a_field_violation_with_path_rule_id_and_message() -> None:
    request = orders_pb2.CreateOrderRequest(
        request_id="r-1", customer_id="c-1", items=[orders_pb2.LineItem(sku="Bad SKU!", quantity=0)]
    )
    bad = RequestValidator().check(request)
    assert bad is not None
    found = [(v.field, v.reason, v.description) for v in bad.field_violations]
    assert found == [
        ("items[0].sku", "string.pattern", "does not match regex pattern `^[a-z0-9][a-z0-9-]*$`"),
        ("items[0].quantity", "int32.gt_lte", "must be greater than 0 and less than or equal to 1000"),
    ]


def test_a_request_that_keeps_its_rules_has_no_violations() -> None:
    validator = RequestValidator()
    assert validator.check(inventory_pb2.ReserveRequest(reservation_id="r-1", sku="sku-tea", quantity=3)) is None
    assert validator.check(orders_pb2.ListOrdersRequest(page_size=0)) is None  # 0: the server's default


def test_a_message_without_rules_is_never_refused() -> None:
    assert RequestValidator().check(status_pb2.Status(code=3)) is None


def test_the_mapping_keeps_protovalidates_order_and_the_message_level_field_is_empty() -> None:
    violations = [
        protovalidate.ViolationPb(rule_id="message.cel", message="a before b"),
        protovalidate.ViolationPb(
            field=protovalidate.FieldPathPb(elements=[element("sku")]), rule_id="string.min_len", message="short"
        ),
    ]
    bad = bad_request(violations)
    assert [(v.field, v.reason, v.description) for v in bad.field_violations] == [
        ("", "message.cel", "a before b"),
        ("sku", "string.min_len", "short"),
    ]


def test_the_summary_names_the_first_violation_and_counts_the_rest() -> None:
    one = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="sku", description="too short")]
    )
    assert summary("GetStockRequest", one) == "GetStockRequest is invalid: sku: too short"
    two = error_details_pb2.BadRequest(field_violations=[*one.field_violations, *one.field_violations])
    assert summary("GetStockRequest", two).endswith("(and 1 more: see the BadRequest details)")


def test_request_invalid_carries_error_info_and_the_bad_request_in_its_status() -> None:
    bad = RequestValidator().check(inventory_pb2.GetStockRequest(sku=""))
    assert bad is not None
    error = RequestInvalid(summary("GetStockRequest", bad), bad, method="/shop.inventory.v1.Inventory/GetStock")
    assert error.code().name == "INVALID_ARGUMENT"
    info = error_info(error)
    assert info is not None
    assert info.reason == ErrorReason.REQUEST_INVALID
    assert dict(info.metadata) == {"violations": "2", "method": "/shop.inventory.v1.Inventory/GetStock"}
    (details,) = [value for key, value in error.trailing_metadata() if key == DETAILS_KEY]
    status = status_pb2.Status.FromString(details)
    packed: list[any_pb2.Any] = list(status.details)
    unpacked = error_details_pb2.BadRequest()
    assert packed[1].Unpack(unpacked)
    assert [(v.field, v.reason) for v in unpacked.field_violations] == [
        ("sku", "string.min_len"),
        ("sku", "string.pattern"),
    ]


def test_decoders_give_the_message_or_none() -> None:
    request = inventory_pb2.GetStockRequest(sku="sku-tea")
    assert typed(request) is request
    assert typed(b"raw") is None
    parse = parse_as(inventory_pb2.GetStockRequest)
    assert parse(request.SerializeToString()) == request
    assert parse(b"\xff\xff\xff") is None  # not the message: the app's own decoding answers it
    assert parse(iter([])) is None  # a stream


# ------------------------------------------------------------------------------------------ the inbound stage


async def test_the_inbound_stage_refuses_an_invalid_request_before_the_handler() -> None:
    from meshlet.call import InboundCall
    from meshlet.inbound import InboundParts, build_inbound

    served: list[object] = []

    async def handler(call: InboundCall) -> str:
        served.append(call.request)
        return "served"

    pipeline = build_inbound(
        handler, InboundParts(validator=RequestValidator()), "/shop.inventory.v1.Inventory/Reserve"
    )
    good = inventory_pb2.ReserveRequest(reservation_id="r-1", sku="sku-tea", quantity=1)
    assert await pipeline(InboundCall("/shop.inventory.v1.Inventory/Reserve", (), good)) == "served"
    bad = inventory_pb2.ReserveRequest(reservation_id="r-1", sku="sku-tea", quantity=0)
    with pytest.raises(RequestInvalid) as refused:
        await pipeline(InboundCall("/shop.inventory.v1.Inventory/Reserve", (), bad))
    assert [(v.field, v.reason) for v in refused.value.bad_request.field_violations] == [("quantity", "int32.gt_lte")]
    assert served == [good]


async def test_without_the_validator_or_a_decoder_there_is_no_stage() -> None:
    from meshlet.inbound import InboundParts, inbound_stages
    from meshlet.inbound.validate import ValidateRequest

    def named(stages: list[object]) -> bool:
        return any(isinstance(stage, ValidateRequest) for stage in stages)

    assert not named(list(inbound_stages(InboundParts())))  # off by default
    assert named(list(inbound_stages(InboundParts(validator=RequestValidator()))))
    assert not named(list(inbound_stages(InboundParts(validator=RequestValidator()), decode=None)))  # type unknown


def test_the_edge_validates_by_default_and_servers_only_when_asked() -> None:
    from meshlet.config import Config, load_config

    assert (Config().edge.validate_requests, Config().inbound.validate_requests) == (True, False)
    config = load_config(None, env={"MESHLET_INBOUND__VALIDATE": "true", "MESHLET_EDGE__VALIDATE": "false"})
    assert (config.edge.validate_requests, config.inbound.validate_requests) == (False, True)
    assert config.redacted()["inbound"]["validate"] is True  # /config says it as the file does


NESTED_RULES = """
syntax = "proto3";
package probe.v1;
import "buf/validate/validate.proto";

message Plain { string name = 1; Plain next = 2; }
message Leaf { string sku = 1 [(buf.validate.field).string.min_len = 3]; }
message Outer { string note = 1; repeated Leaf leaves = 2; map<string, Leaf> by_name = 3; }
message Ring { Ring next = 1; Leaf leaf = 2; }
message Chosen { oneof pick { option (buf.validate.oneof).required = true; string a = 1; string b = 2; } }
message Whole { option (buf.validate.message).cel = {id: "x", expression: "this.a == ''"}; string a = 1; }
"""


def compiled_pool(tmp_path: Path, text: str) -> descriptor_pool.DescriptorPool:
    """`text` compiled by protoc into a pool of its own, as the edge loads an operator's descriptor set."""
    from importlib import resources

    from grpc_tools import protoc

    from protos.generate import validate_descriptor_set

    (tmp_path / "probe.proto").write_text(text)
    (tmp_path / "validate.binpb").write_bytes(validate_descriptor_set())
    out = tmp_path / "probe.binpb"
    args = [
        "protoc", f"-I{tmp_path}", f"-I{resources.files('grpc_tools') / '_proto'}",
        f"--descriptor_set_in={tmp_path / 'validate.binpb'}", "--include_imports", f"--descriptor_set_out={out}",
        "probe.proto",
    ]  # fmt: skip
    assert protoc.main(args) == 0
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file)
    return pool


def test_a_type_is_constrained_when_a_rule_reaches_it_through_any_field(tmp_path: Path) -> None:
    pool = compiled_pool(tmp_path, NESTED_RULES)
    found = {name: has_constraints(pool.FindMessageTypeByName(f"probe.v1.{name}")) for name in (
        "Plain", "Leaf", "Outer", "Ring", "Chosen", "Whole")}  # fmt: skip
    assert found == {"Plain": False, "Leaf": True, "Outer": True, "Ring": True, "Chosen": True, "Whole": True}
    assert has_constraints(inventory_pb2.ReserveRequest.DESCRIPTOR)
    assert not has_constraints(status_pb2.Status.DESCRIPTOR)


def test_a_rule_deep_in_a_request_is_still_checked(tmp_path: Path) -> None:
    pool = compiled_pool(tmp_path, NESTED_RULES)
    outer: Any = message_factory.GetMessageClass(pool.FindMessageTypeByName("probe.v1.Outer"))
    validator = RequestValidator()
    broken = validator.check(outer(note="n", by_name={"k": {"sku": "ab"}}))
    assert broken is not None
    assert [v.field for v in broken.field_violations] == ['by_name["k"].sku']
    assert validator.check(outer(note="n", leaves=[{"sku": "abc"}])) is None
