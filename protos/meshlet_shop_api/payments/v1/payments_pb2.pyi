from meshlet_api.buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ChargeRequest(_message.Message):
    __slots__ = ("idempotency_key", "order_id", "amount_cents", "currency")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    order_id: str
    amount_cents: int
    currency: str
    def __init__(self, idempotency_key: _Optional[str] = ..., order_id: _Optional[str] = ..., amount_cents: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class ChargeReply(_message.Message):
    __slots__ = ("charge_id", "replayed")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    replayed: bool
    def __init__(self, charge_id: _Optional[str] = ..., replayed: _Optional[bool] = ...) -> None: ...
