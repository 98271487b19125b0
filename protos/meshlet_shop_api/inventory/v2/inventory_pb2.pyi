import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Availability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AVAILABILITY_UNSPECIFIED: _ClassVar[Availability]
    IN_STOCK: _ClassVar[Availability]
    LOW: _ClassVar[Availability]
    OUT_OF_STOCK: _ClassVar[Availability]
AVAILABILITY_UNSPECIFIED: Availability
IN_STOCK: Availability
LOW: Availability
OUT_OF_STOCK: Availability

class Item(_message.Message):
    __slots__ = ("name", "sku", "title", "available", "availability", "price_cents", "read_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    READ_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    sku: str
    title: str
    available: int
    availability: Availability
    price_cents: int
    read_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., sku: _Optional[str] = ..., title: _Optional[str] = ..., available: _Optional[int] = ..., availability: _Optional[_Union[Availability, str]] = ..., price_cents: _Optional[int] = ..., read_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetItemRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ItemFilter(_message.Message):
    __slots__ = ("availability",)
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    availability: _containers.RepeatedScalarFieldContainer[Availability]
    def __init__(self, availability: _Optional[_Iterable[_Union[Availability, str]]] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("skus", "filter")
    SKUS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    skus: _containers.RepeatedScalarFieldContainer[str]
    filter: ItemFilter
    def __init__(self, skus: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[ItemFilter, _Mapping]] = ...) -> None: ...

class ListItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class ReserveItemRequest(_message.Message):
    __slots__ = ("name", "reservation_id", "quantity")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    reservation_id: str
    quantity: int
    def __init__(self, name: _Optional[str] = ..., reservation_id: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("reservation_id", "item", "quantity", "remaining", "served_by")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    item: str
    quantity: int
    remaining: int
    served_by: str
    def __init__(self, reservation_id: _Optional[str] = ..., item: _Optional[str] = ..., quantity: _Optional[int] = ..., remaining: _Optional[int] = ..., served_by: _Optional[str] = ...) -> None: ...

class ReleaseReservationRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class ReleaseReservationResponse(_message.Message):
    __slots__ = ("reservation_id", "released", "served_by")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    released: bool
    served_by: str
    def __init__(self, reservation_id: _Optional[str] = ..., released: _Optional[bool] = ..., served_by: _Optional[str] = ...) -> None: ...
