"""What the sidecar learns from proto descriptors: each method's kind (which handler serves it) and whether it
is safe to re-send, and when it may ask a reflection service again."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from meshlet.call import Cardinality
from meshlet_api.echo.v1 import echo_pb2
from meshlet_shop_api.inventory.v1 import inventory_pb2
from meshlet_sidecar.method_kinds import (
    AskSchedule,
    MethodInfo,
    MethodTable,
    methods_in,
    methods_in_descriptor_set,
    parse_files,
)

ECHO = "/meshlet_api.echo.v1.Echo"


def file_of(module: object) -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(file)  # type: ignore[attr-defined]
    return file


def descriptor_set(*modules: object) -> bytes:
    files = descriptor_pb2.FileDescriptorSet(file=[file_of(module) for module in modules])
    return files.SerializeToString()


def test_each_method_gets_its_kind_from_its_streaming_flags() -> None:
    methods = methods_in([file_of(echo_pb2)])
    assert methods[f"{ECHO}/Echo"].kind is Cardinality.UNARY_UNARY
    assert methods[f"{ECHO}/ServerStream"].kind is Cardinality.UNARY_STREAM
    assert methods[f"{ECHO}/ClientStream"].kind is Cardinality.STREAM_UNARY
    assert methods[f"{ECHO}/BidiStream"].kind is Cardinality.STREAM_STREAM


def test_idempotency_level_idempotent_or_no_side_effects_makes_a_method_safe_to_resend() -> None:
    methods = methods_in([file_of(echo_pb2)])
    assert methods[f"{ECHO}/Echo"].idempotent  # IDEMPOTENT
    assert methods[f"{ECHO}/Stats"].idempotent  # NO_SIDE_EFFECTS
    assert not methods[f"{ECHO}/EchoOnce"].idempotent  # nothing declared


def test_a_file_without_a_package_names_its_methods_without_one() -> None:
    file = descriptor_pb2.FileDescriptorProto(name="bare.proto")
    file.service.add(name="Bare").method.add(name="Ping", input_type=".E", output_type=".E", server_streaming=True)
    assert methods_in([file]) == {"/Bare/Ping": MethodInfo(Cardinality.UNARY_STREAM, idempotent=False)}


def test_a_descriptor_set_declares_the_methods_of_every_file_in_it() -> None:
    methods = methods_in_descriptor_set(descriptor_set(echo_pb2, inventory_pb2))
    assert f"{ECHO}/Echo" in methods
    assert any(path.startswith("/shop.inventory.v1.Inventory/") for path in methods)


def test_a_file_that_is_not_a_descriptor_set_is_refused_saying_how_to_write_one() -> None:
    with pytest.raises(ValueError, match="--descriptor_set_out"):
        methods_in_descriptor_set(b"\xff\xff\xff not a protobuf")


def test_a_descriptor_set_without_services_is_refused() -> None:
    empty = descriptor_pb2.FileDescriptorSet(file=[descriptor_pb2.FileDescriptorProto(name="x.proto")])
    with pytest.raises(ValueError, match="declares no service"):
        methods_in_descriptor_set(empty.SerializeToString())


def test_reflection_answers_parse_as_files() -> None:
    files = parse_files([file_of(echo_pb2).SerializeToString()])
    assert [file.name for file in files] == [echo_pb2.DESCRIPTOR.name]
    with pytest.raises(ValueError, match="FileDescriptorProto"):
        parse_files([b"\xff\xff"])


def test_the_table_version_grows_only_when_something_new_is_learnt() -> None:
    table = MethodTable()
    learnt = methods_in([file_of(echo_pb2)])
    assert table.get(f"{ECHO}/Echo") is None
    assert table.learn(learnt)
    assert table.version == 1
    assert table.get(f"{ECHO}/Echo") == MethodInfo(Cardinality.UNARY_UNARY, idempotent=True)
    assert not table.learn(learnt)  # the same answer again: handlers built since stay valid
    assert table.version == 1


def test_descriptor_sets_win_over_what_reflection_says() -> None:
    declared = {f"{ECHO}/Echo": MethodInfo(Cardinality.UNARY_UNARY, idempotent=False)}
    table = MethodTable(declared)
    assert not table.learn({f"{ECHO}/Echo": MethodInfo(Cardinality.UNARY_UNARY, idempotent=True)})
    assert table.get(f"{ECHO}/Echo") == declared[f"{ECHO}/Echo"]
    assert table.version == 0  # nothing changed, so nothing is rebuilt or logged on every recheck


def test_a_newer_answer_from_reflection_replaces_an_older_one() -> None:
    table = MethodTable()
    table.learn({f"{ECHO}/Echo": MethodInfo(Cardinality.UNARY_UNARY, idempotent=True)})
    streaming = MethodInfo(Cardinality.UNARY_STREAM, idempotent=True)
    assert table.learn({f"{ECHO}/Echo": streaming})
    assert table.get(f"{ECHO}/Echo") == streaming
    assert table.version == 2


def test_a_miss_is_passed_to_whoever_learns_for_the_table() -> None:
    table, asked = MethodTable(), list[str]()
    table.missed("/x.Y/Z")  # nobody listening: nothing happens
    table.on_miss(asked.append)
    table.missed("/x.Y/Z")
    assert asked == ["/x.Y/Z"]


def test_schedule_never_asks_twice_at_once() -> None:
    schedule = AskSchedule()
    assert schedule.may_ask(0.0)
    schedule.asked()
    assert not schedule.may_ask(100.0)


def test_schedule_backs_off_doubling_after_failures_up_to_its_cap() -> None:
    schedule = AskSchedule(min_backoff_s=1.0, max_backoff_s=4.0)
    waits = []
    now = 0.0
    for _ in range(5):
        schedule.asked()
        wait = schedule.failed(now)
        waits.append(wait)
        assert not schedule.may_ask(now + wait - 0.01)
        now += wait
        assert schedule.may_ask(now)
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_schedule_rechecks_an_answered_source_only_after_the_recheck_interval() -> None:
    schedule = AskSchedule(min_backoff_s=1.0, recheck_s=30.0)
    schedule.asked()
    schedule.failed(0.0)
    schedule.asked()
    schedule.answered(1.0)
    assert not schedule.may_ask(30.0)
    assert schedule.may_ask(31.0)
    schedule.asked()
    assert schedule.failed(31.0) == 1.0  # an answer resets the backoff


def test_schedule_asks_a_source_that_refused_only_after_the_refusal_interval() -> None:
    schedule = AskSchedule(min_backoff_s=1.0, refused_s=300.0)
    schedule.asked()
    assert schedule.refused(0.0) == 300.0
    assert not schedule.may_ask(299.0)
    assert schedule.may_ask(300.0)


def test_methods_learnt_from_descriptors_know_their_request_type_for_validation() -> None:
    from meshlet_shop_api.inventory.v1 import inventory_pb2
    from tests.support.descriptor_sets import descriptor_set

    methods = methods_in(descriptor_set(inventory_pb2.DESCRIPTOR).file)
    request_type = methods["/shop.inventory.v1.Inventory/Reserve"].request_type
    assert request_type is not None
    assert request_type.DESCRIPTOR.full_name == "shop.inventory.v1.ReserveRequest"
    # a file whose imports are missing still gives its methods' kinds, without types
    alone = [file for file in descriptor_set(inventory_pb2.DESCRIPTOR).file if file.name.endswith("inventory.proto")]
    kept = methods_in(alone)["/shop.inventory.v1.Inventory/Reserve"]
    assert kept.kind is Cardinality.UNARY_UNARY
    assert kept.request_type is None
