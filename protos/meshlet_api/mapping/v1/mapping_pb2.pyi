import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Genre(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENRE_UNSPECIFIED: _ClassVar[Genre]
    FICTION: _ClassVar[Genre]
    HISTORY: _ClassVar[Genre]
    POETRY: _ClassVar[Genre]
GENRE_UNSPECIFIED: Genre
FICTION: Genre
HISTORY: Genre
POETRY: Genre

class Shelf(_message.Message):
    __slots__ = ("id", "theme")
    ID_FIELD_NUMBER: _ClassVar[int]
    THEME_FIELD_NUMBER: _ClassVar[int]
    id: str
    theme: str
    def __init__(self, id: _Optional[str] = ..., theme: _Optional[str] = ...) -> None: ...

class Book(_message.Message):
    __slots__ = ("id", "title", "genre", "pages", "tags")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    GENRE_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    genre: Genre
    pages: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., genre: _Optional[_Union[Genre, str]] = ..., pages: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class Page(_message.Message):
    __slots__ = ("size", "token")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    size: int
    token: str
    def __init__(self, size: _Optional[int] = ..., token: _Optional[str] = ...) -> None: ...

class Received(_message.Message):
    __slots__ = ("method", "request")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    method: str
    request: bytes
    def __init__(self, method: _Optional[str] = ..., request: _Optional[bytes] = ...) -> None: ...

class GetShelfRequest(_message.Message):
    __slots__ = ("shelf", "with_books")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    WITH_BOOKS_FIELD_NUMBER: _ClassVar[int]
    shelf: str
    with_books: bool
    def __init__(self, shelf: _Optional[str] = ..., with_books: _Optional[bool] = ...) -> None: ...

class GetBookRequest(_message.Message):
    __slots__ = ("shelf", "book")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    BOOK_FIELD_NUMBER: _ClassVar[int]
    shelf: Shelf
    book: Book
    def __init__(self, shelf: _Optional[_Union[Shelf, _Mapping]] = ..., book: _Optional[_Union[Book, _Mapping]] = ...) -> None: ...

class NamedRequest(_message.Message):
    __slots__ = ("name", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class GetFileRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class CreateBookRequest(_message.Message):
    __slots__ = ("shelf", "book", "request_id", "validate_only")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    BOOK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    shelf: str
    book: Book
    request_id: str
    validate_only: bool
    def __init__(self, shelf: _Optional[str] = ..., book: _Optional[_Union[Book, _Mapping]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class UpdateBookRequest(_message.Message):
    __slots__ = ("book", "update_mask")
    BOOK_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    book: Book
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, book: _Optional[_Union[Book, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class ReplaceShelfRequest(_message.Message):
    __slots__ = ("shelf",)
    SHELF_FIELD_NUMBER: _ClassVar[int]
    shelf: Shelf
    def __init__(self, shelf: _Optional[_Union[Shelf, _Mapping]] = ...) -> None: ...

class DeleteBookRequest(_message.Message):
    __slots__ = ("id", "force", "etag")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: str
    force: bool
    etag: _wrappers_pb2.StringValue
    def __init__(self, id: _Optional[str] = ..., force: _Optional[bool] = ..., etag: _Optional[_Union[_wrappers_pb2.StringValue, _Mapping]] = ...) -> None: ...

class ListBooksRequest(_message.Message):
    __slots__ = ("shelf", "tags", "page", "genre", "genres", "min_pages", "max_pages", "min_rating", "published_after", "within", "limit", "in_print", "cursor")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    GENRE_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    MIN_PAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_PAGES_FIELD_NUMBER: _ClassVar[int]
    MIN_RATING_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AFTER_FIELD_NUMBER: _ClassVar[int]
    WITHIN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    IN_PRINT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    shelf: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    page: Page
    genre: Genre
    genres: _containers.RepeatedScalarFieldContainer[Genre]
    min_pages: int
    max_pages: int
    min_rating: float
    published_after: _timestamp_pb2.Timestamp
    within: _duration_pb2.Duration
    limit: _wrappers_pb2.Int32Value
    in_print: _wrappers_pb2.BoolValue
    cursor: bytes
    def __init__(self, shelf: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., page: _Optional[_Union[Page, _Mapping]] = ..., genre: _Optional[_Union[Genre, str]] = ..., genres: _Optional[_Iterable[_Union[Genre, str]]] = ..., min_pages: _Optional[int] = ..., max_pages: _Optional[int] = ..., min_rating: _Optional[float] = ..., published_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., within: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., limit: _Optional[_Union[_wrappers_pb2.Int32Value, _Mapping]] = ..., in_print: _Optional[_Union[_wrappers_pb2.BoolValue, _Mapping]] = ..., cursor: _Optional[bytes] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("shelf", "query", "page")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    shelf: str
    query: str
    page: Page
    def __init__(self, shelf: _Optional[str] = ..., query: _Optional[str] = ..., page: _Optional[_Union[Page, _Mapping]] = ...) -> None: ...

class PurgeRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class Everything(_message.Message):
    __slots__ = ("int64_value", "uint64_value", "fixed64_value", "sint64_value", "sfixed64_value", "int32_value", "uint32_value", "double_value", "float_value", "bool_value", "string_value", "genre", "genres", "blob", "at", "wait", "mask", "attributes", "anything", "list", "maybe_int32", "maybe_int64", "maybe_uint64", "maybe_string", "maybe_bool", "maybe_double", "maybe_bytes", "counts", "books_by_number", "flags", "name", "number", "book", "books", "favourite", "maybe_count", "extra")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class BooksByNumberEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: Book
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[Book, _Mapping]] = ...) -> None: ...
    class FlagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: bool
        value: str
        def __init__(self, key: _Optional[bool] = ..., value: _Optional[str] = ...) -> None: ...
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    UINT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    FIXED64_VALUE_FIELD_NUMBER: _ClassVar[int]
    SINT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    SFIXED64_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT32_VALUE_FIELD_NUMBER: _ClassVar[int]
    UINT32_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    GENRE_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    ANYTHING_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    MAYBE_INT32_FIELD_NUMBER: _ClassVar[int]
    MAYBE_INT64_FIELD_NUMBER: _ClassVar[int]
    MAYBE_UINT64_FIELD_NUMBER: _ClassVar[int]
    MAYBE_STRING_FIELD_NUMBER: _ClassVar[int]
    MAYBE_BOOL_FIELD_NUMBER: _ClassVar[int]
    MAYBE_DOUBLE_FIELD_NUMBER: _ClassVar[int]
    MAYBE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    BOOKS_BY_NUMBER_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    BOOK_FIELD_NUMBER: _ClassVar[int]
    BOOKS_FIELD_NUMBER: _ClassVar[int]
    FAVOURITE_FIELD_NUMBER: _ClassVar[int]
    MAYBE_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    int64_value: int
    uint64_value: int
    fixed64_value: int
    sint64_value: int
    sfixed64_value: int
    int32_value: int
    uint32_value: int
    double_value: float
    float_value: float
    bool_value: bool
    string_value: str
    genre: Genre
    genres: _containers.RepeatedScalarFieldContainer[Genre]
    blob: bytes
    at: _timestamp_pb2.Timestamp
    wait: _duration_pb2.Duration
    mask: _field_mask_pb2.FieldMask
    attributes: _struct_pb2.Struct
    anything: _struct_pb2.Value
    list: _struct_pb2.ListValue
    maybe_int32: _wrappers_pb2.Int32Value
    maybe_int64: _wrappers_pb2.Int64Value
    maybe_uint64: _wrappers_pb2.UInt64Value
    maybe_string: _wrappers_pb2.StringValue
    maybe_bool: _wrappers_pb2.BoolValue
    maybe_double: _wrappers_pb2.DoubleValue
    maybe_bytes: _wrappers_pb2.BytesValue
    counts: _containers.ScalarMap[str, int]
    books_by_number: _containers.MessageMap[int, Book]
    flags: _containers.ScalarMap[bool, str]
    name: str
    number: int
    book: Book
    books: _containers.RepeatedCompositeFieldContainer[Book]
    favourite: Book
    maybe_count: int
    extra: _any_pb2.Any
    def __init__(self, int64_value: _Optional[int] = ..., uint64_value: _Optional[int] = ..., fixed64_value: _Optional[int] = ..., sint64_value: _Optional[int] = ..., sfixed64_value: _Optional[int] = ..., int32_value: _Optional[int] = ..., uint32_value: _Optional[int] = ..., double_value: _Optional[float] = ..., float_value: _Optional[float] = ..., bool_value: _Optional[bool] = ..., string_value: _Optional[str] = ..., genre: _Optional[_Union[Genre, str]] = ..., genres: _Optional[_Iterable[_Union[Genre, str]]] = ..., blob: _Optional[bytes] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., anything: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., list: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ..., maybe_int32: _Optional[_Union[_wrappers_pb2.Int32Value, _Mapping]] = ..., maybe_int64: _Optional[_Union[_wrappers_pb2.Int64Value, _Mapping]] = ..., maybe_uint64: _Optional[_Union[_wrappers_pb2.UInt64Value, _Mapping]] = ..., maybe_string: _Optional[_Union[_wrappers_pb2.StringValue, _Mapping]] = ..., maybe_bool: _Optional[_Union[_wrappers_pb2.BoolValue, _Mapping]] = ..., maybe_double: _Optional[_Union[_wrappers_pb2.DoubleValue, _Mapping]] = ..., maybe_bytes: _Optional[_Union[_wrappers_pb2.BytesValue, _Mapping]] = ..., counts: _Optional[_Mapping[str, int]] = ..., books_by_number: _Optional[_Mapping[int, Book]] = ..., flags: _Optional[_Mapping[bool, str]] = ..., name: _Optional[str] = ..., number: _Optional[int] = ..., book: _Optional[_Union[Book, _Mapping]] = ..., books: _Optional[_Iterable[_Union[Book, _Mapping]]] = ..., favourite: _Optional[_Union[Book, _Mapping]] = ..., maybe_count: _Optional[int] = ..., extra: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class FailRequest(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class FaultDetail(_message.Message):
    __slots__ = ("hint", "attempt")
    HINT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    hint: str
    attempt: int
    def __init__(self, hint: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...
