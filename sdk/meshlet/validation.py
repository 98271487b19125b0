"""Requests checked against the ``buf.validate`` constraints written in their protos (protovalidate), and what
broke said as a ``google.rpc.BadRequest``: one FieldViolation per broken rule, with the field's path as the
caller wrote it (``items[0].sku``), the rule's id as its reason (``string.pattern``) and protovalidate's words as
its description. One mapping for every face: the edge answers it as a 400, the inbound validate stage as
INVALID_ARGUMENT with the BadRequest in ``grpc-status-details-bin``.

A constraint that cannot be compiled or evaluated (a broken CEL expression in a proto) is the proto author's bug,
not the caller's: the request passes unchecked and the log says so once per message type, rather than every call
of that method failing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import protovalidate
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2

log = logging.getLogger("meshlet.validation")

Decode = Callable[[Any], Message | None]


class RequestValidator:
    """Checks messages of any type against their descriptors' constraints. Build one per process: the engine
    compiles each message type's rules once, on its first message, and keeps them."""

    __slots__ = ("_broken", "_constrained", "_engine")

    def __init__(self) -> None:
        self._engine = protovalidate.Validator()
        self._broken: set[str] = set()  # message types whose rules could not run, said once each
        # by message type (a Descriptor, protobuf's Python or upb's): whether any rule reaches its messages
        self._constrained: dict[Any, bool] = {}

    def check(self, message: Message) -> error_details_pb2.BadRequest | None:
        """None when `message` keeps every constraint of its type, else the BadRequest saying what broke."""
        message_type = message.DESCRIPTOR
        constrained = self._constrained.get(message_type)
        if constrained is None:
            constrained = self._constrained[message_type] = has_constraints(message_type)
        if not constrained:
            return None  # no rule to keep: protovalidate's walk would find nothing
        try:
            violations = self._engine.collect_violations(message)
        except (protovalidate.CompilationError, protovalidate.EvaluationError) as error:
            name = message.DESCRIPTOR.full_name
            if name not in self._broken:
                self._broken.add(name)
                log.error("the buf.validate rules of %s cannot run (%s): its requests pass unchecked", name, error)
            return None
        if not violations:
            return None
        return bad_request(violation.proto for violation in violations)


# (buf.validate.message), (buf.validate.field) and (buf.validate.oneof) are all extension 1159 of their options;
# serialized, each starts with this tag (field 1159, length-delimited) at the top level of the options' bytes.
_RULES_TAG = b"\xba\x48"


def has_constraints(message_type: Any) -> bool:
    """Whether a ``buf.validate`` rule is written on the message type, one of its fields or oneofs, or on any type
    its fields reach. Read from the options' bytes, so that options parsed without buf.validate's descriptors (a
    pool of their own) are read too: a stray match only costs a check, and a rule is never missed."""
    seen: set[str] = set()

    def reaches_a_rule(current: Any) -> bool:
        if current.full_name in seen:
            return False  # a recursive type: its rules, if any, are found where the walk first met it
        seen.add(current.full_name)
        if _RULES_TAG in current.GetOptions().SerializeToString():
            return True
        if any(_RULES_TAG in oneof.GetOptions().SerializeToString() for oneof in current.oneofs):
            return True
        for field in current.fields:
            if _RULES_TAG in field.GetOptions().SerializeToString():
                return True
            if field.message_type is not None and reaches_a_rule(field.message_type):
                return True
        return False

    return reaches_a_rule(message_type)


def bad_request(violations: Iterable[protovalidate.ViolationPb]) -> error_details_pb2.BadRequest:
    """The BadRequest for protovalidate's `violations`, in its order."""
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=field_path(violation.field.elements) if violation.field is not None else "",
                reason=violation.rule_id,
                description=violation.message,
            )
            for violation in violations
        ]
    )


def field_path(elements: Iterable[protovalidate.FieldPathElementPb]) -> str:
    """A field path as the caller wrote the request: ``items[0].sku``, ``labels["env"]``; "" for the message."""
    text = ""
    for element in elements:
        text += f".{element.field_name}" if text else element.field_name
        subscript = element.subscript
        if subscript is None:
            continue
        value = subscript.value
        if subscript.field == "string_key":
            text += f"[{json.dumps(value)}]"
        elif subscript.field == "bool_key":
            text += f"[{'true' if value else 'false'}]"
        else:  # index, int_key, uint_key
            text += f"[{value}]"
    return text


def summary(message_type: str, bad: error_details_pb2.BadRequest) -> str:
    """One line for the status message: the first violation, and how many more the details hold."""
    first = bad.field_violations[0]
    where = f"{first.field}: " if first.field else ""
    more = len(bad.field_violations) - 1
    rest = f" (and {more} more: see the BadRequest details)" if more else ""
    return f"{message_type} is invalid: {where}{first.description}{rest}"


def typed(request: Any) -> Message | None:
    """The request itself when it is a message (the SDK's servicers get them decoded); None for a stream."""
    return request if isinstance(request, Message) else None


def parse_as(request_type: type[Message]) -> Decode:
    """Decoding raw bytes (the sidecar's) as `request_type`. Bytes that are no such message give None: the app's
    own decoding answers them, as it would without the mesh."""

    def decode(request: Any) -> Message | None:
        if not isinstance(request, bytes):
            return None
        try:
            return request_type.FromString(request)
        except DecodeError:
            return None

    return decode
