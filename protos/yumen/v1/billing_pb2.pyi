from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CatalogueChange(_message.Message):
    __slots__ = ("kind", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    fields: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CatalogueChangeResult(_message.Message):
    __slots__ = ("log_index",)
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    log_index: int
    def __init__(self, log_index: _Optional[int] = ...) -> None: ...

class GetCatalogueRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CatalogueItem(_message.Message):
    __slots__ = ("kind", "product", "purpose", "unit", "amount", "start", "end", "set_by", "log_index", "in_force")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SET_BY_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    product: str
    purpose: str
    unit: str
    amount: str
    start: str
    end: str
    set_by: str
    log_index: int
    in_force: bool
    def __init__(self, kind: _Optional[str] = ..., product: _Optional[str] = ..., purpose: _Optional[str] = ..., unit: _Optional[str] = ..., amount: _Optional[str] = ..., start: _Optional[str] = ..., end: _Optional[str] = ..., set_by: _Optional[str] = ..., log_index: _Optional[int] = ..., in_force: bool = ...) -> None: ...

class Catalogue(_message.Message):
    __slots__ = ("items", "revenue_rule", "allowed_revenue", "free_purposes")
    class AllowedRevenueEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REVENUE_RULE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_REVENUE_FIELD_NUMBER: _ClassVar[int]
    FREE_PURPOSES_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CatalogueItem]
    revenue_rule: str
    allowed_revenue: _containers.ScalarMap[str, str]
    free_purposes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[CatalogueItem, _Mapping]]] = ..., revenue_rule: _Optional[str] = ..., allowed_revenue: _Optional[_Mapping[str, str]] = ..., free_purposes: _Optional[_Iterable[str]] = ...) -> None: ...
