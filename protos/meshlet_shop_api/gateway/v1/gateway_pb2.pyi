from meshlet_api.buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CheckoutRequest(_message.Message):
    __slots__ = ("request_id", "customer_id", "sku", "quantity")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    customer_id: str
    sku: str
    quantity: int
    def __init__(self, request_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., sku: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class CheckoutReply(_message.Message):
    __slots__ = ("order_id", "charge_id")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    charge_id: str
    def __init__(self, order_id: _Optional[str] = ..., charge_id: _Optional[str] = ...) -> None: ...
