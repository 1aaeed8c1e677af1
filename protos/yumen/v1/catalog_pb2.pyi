from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Column(_message.Message):
    __slots__ = ("name", "type", "unit", "description", "lower", "upper", "categories", "public")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    unit: str
    description: str
    lower: float
    upper: float
    categories: _containers.RepeatedScalarFieldContainer[str]
    public: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., unit: _Optional[str] = ..., description: _Optional[str] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., categories: _Optional[_Iterable[str]] = ..., public: bool = ...) -> None: ...

class PrivacyUnit(_message.Message):
    __slots__ = ("column", "max_contributions", "namespace", "shared", "accounting", "delta", "lifetime_epsilon")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTING_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_EPSILON_FIELD_NUMBER: _ClassVar[int]
    column: str
    max_contributions: int
    namespace: str
    shared: bool
    accounting: str
    delta: str
    lifetime_epsilon: str
    def __init__(self, column: _Optional[str] = ..., max_contributions: _Optional[int] = ..., namespace: _Optional[str] = ..., shared: bool = ..., accounting: _Optional[str] = ..., delta: _Optional[str] = ..., lifetime_epsilon: _Optional[str] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "title", "description", "department", "level", "columns", "privacy_unit", "update_frequency", "source_system", "price_class", "version", "online")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_UNIT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SYSTEM_FIELD_NUMBER: _ClassVar[int]
    PRICE_CLASS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    description: str
    department: str
    level: str
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    privacy_unit: PrivacyUnit
    update_frequency: str
    source_system: str
    price_class: str
    version: str
    online: bool
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., department: _Optional[str] = ..., level: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., privacy_unit: _Optional[_Union[PrivacyUnit, _Mapping]] = ..., update_frequency: _Optional[str] = ..., source_system: _Optional[str] = ..., price_class: _Optional[str] = ..., version: _Optional[str] = ..., online: bool = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("department", "level", "keyword")
    DEPARTMENT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    department: str
    level: str
    keyword: str
    def __init__(self, department: _Optional[str] = ..., level: _Optional[str] = ..., keyword: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
