from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryFilter(_message.Message):
    __slots__ = ("column", "op", "value_json")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    column: str
    op: str
    value_json: str
    def __init__(self, column: _Optional[str] = ..., op: _Optional[str] = ..., value_json: _Optional[str] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("aggregate", "column", "group_by", "filters", "bins", "quantile")
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_FIELD_NUMBER: _ClassVar[int]
    aggregate: str
    column: str
    group_by: str
    filters: _containers.RepeatedCompositeFieldContainer[QueryFilter]
    bins: int
    quantile: str
    def __init__(self, aggregate: _Optional[str] = ..., column: _Optional[str] = ..., group_by: _Optional[str] = ..., filters: _Optional[_Iterable[_Union[QueryFilter, _Mapping]]] = ..., bins: _Optional[int] = ..., quantile: _Optional[str] = ...) -> None: ...

class OutputRange(_message.Message):
    __slots__ = ("name", "lower", "upper")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    name: str
    lower: float
    upper: float
    def __init__(self, name: _Optional[str] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ...) -> None: ...

class Algorithm(_message.Message):
    __slots__ = ("source", "outputs", "params_json", "timeout_s", "memory_mb", "blocks")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    source: bytes
    outputs: _containers.RepeatedCompositeFieldContainer[OutputRange]
    params_json: str
    timeout_s: float
    memory_mb: int
    blocks: int
    def __init__(self, source: _Optional[bytes] = ..., outputs: _Optional[_Iterable[_Union[OutputRange, _Mapping]]] = ..., params_json: _Optional[str] = ..., timeout_s: _Optional[float] = ..., memory_mb: _Optional[int] = ..., blocks: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "datasets", "tier", "purpose", "epsilon", "query", "algorithm", "he_context")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    HE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    tier: str
    purpose: str
    epsilon: str
    query: Query
    algorithm: Algorithm
    he_context: bytes
    def __init__(self, job_id: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., tier: _Optional[str] = ..., purpose: _Optional[str] = ..., epsilon: _Optional[str] = ..., query: _Optional[_Union[Query, _Mapping]] = ..., algorithm: _Optional[_Union[Algorithm, _Mapping]] = ..., he_context: _Optional[bytes] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "state", "message", "operator", "license", "datasets", "tier", "epsilon", "created_unix_ms", "updated_unix_ms", "matched_rule", "policy_version", "price_held")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_RULE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRICE_HELD_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    message: str
    operator: str
    license: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    tier: str
    epsilon: str
    created_unix_ms: int
    updated_unix_ms: int
    matched_rule: str
    policy_version: str
    price_held: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., operator: _Optional[str] = ..., license: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., tier: _Optional[str] = ..., epsilon: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., matched_rule: _Optional[str] = ..., policy_version: _Optional[str] = ..., price_held: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "state", "message", "at_unix_ms")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    message: str
    at_unix_ms: int
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., at_unix_ms: _Optional[int] = ...) -> None: ...

class ReleasedValue(_message.Message):
    __slots__ = ("name", "group", "value", "noise_scale", "ci95")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NOISE_SCALE_FIELD_NUMBER: _ClassVar[int]
    CI95_FIELD_NUMBER: _ClassVar[int]
    name: str
    group: str
    value: float
    noise_scale: float
    ci95: float
    def __init__(self, name: _Optional[str] = ..., group: _Optional[str] = ..., value: _Optional[float] = ..., noise_scale: _Optional[float] = ..., ci95: _Optional[float] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("dataset", "department", "dataset_version", "receipt_digest")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    department: str
    dataset_version: str
    receipt_digest: str
    def __init__(self, dataset: _Optional[str] = ..., department: _Optional[str] = ..., dataset_version: _Optional[str] = ..., receipt_digest: _Optional[str] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("job_id", "values", "mechanism", "epsilon_spent", "result_digest", "provenance", "log_index", "ciphertext", "bill", "suppressed_groups", "loss")
    class BillEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LossEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    RESULT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    BILL_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_GROUPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    values: _containers.RepeatedCompositeFieldContainer[ReleasedValue]
    mechanism: str
    epsilon_spent: str
    result_digest: str
    provenance: _containers.RepeatedCompositeFieldContainer[Provenance]
    log_index: int
    ciphertext: bytes
    bill: _containers.ScalarMap[str, str]
    suppressed_groups: _containers.RepeatedScalarFieldContainer[str]
    loss: _containers.ScalarMap[str, str]
    def __init__(self, job_id: _Optional[str] = ..., values: _Optional[_Iterable[_Union[ReleasedValue, _Mapping]]] = ..., mechanism: _Optional[str] = ..., epsilon_spent: _Optional[str] = ..., result_digest: _Optional[str] = ..., provenance: _Optional[_Iterable[_Union[Provenance, _Mapping]]] = ..., log_index: _Optional[int] = ..., ciphertext: _Optional[bytes] = ..., bill: _Optional[_Mapping[str, str]] = ..., suppressed_groups: _Optional[_Iterable[str]] = ..., loss: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("allowed", "reason", "gate", "matched_rule", "policy_version", "obligations", "epsilon_requested", "epsilon_remaining", "epsilon_remaining_after", "runs_remaining", "price", "period", "accounting", "delta", "cost", "accounts", "price_lines", "product")
    class ObligationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_RULE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    OBLIGATIONS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_AFTER_FIELD_NUMBER: _ClassVar[int]
    RUNS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTING_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    PRICE_LINES_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    reason: str
    gate: str
    matched_rule: str
    policy_version: str
    obligations: _containers.ScalarMap[str, str]
    epsilon_requested: str
    epsilon_remaining: str
    epsilon_remaining_after: str
    runs_remaining: int
    price: str
    period: str
    accounting: str
    delta: str
    cost: str
    accounts: _containers.RepeatedCompositeFieldContainer[BudgetAccount]
    price_lines: _containers.RepeatedCompositeFieldContainer[PriceLine]
    product: str
    def __init__(self, allowed: bool = ..., reason: _Optional[str] = ..., gate: _Optional[str] = ..., matched_rule: _Optional[str] = ..., policy_version: _Optional[str] = ..., obligations: _Optional[_Mapping[str, str]] = ..., epsilon_requested: _Optional[str] = ..., epsilon_remaining: _Optional[str] = ..., epsilon_remaining_after: _Optional[str] = ..., runs_remaining: _Optional[int] = ..., price: _Optional[str] = ..., period: _Optional[str] = ..., accounting: _Optional[str] = ..., delta: _Optional[str] = ..., cost: _Optional[str] = ..., accounts: _Optional[_Iterable[_Union[BudgetAccount, _Mapping]]] = ..., price_lines: _Optional[_Iterable[_Union[PriceLine, _Mapping]]] = ..., product: _Optional[str] = ...) -> None: ...

class PriceLine(_message.Message):
    __slots__ = ("unit", "quantity", "unit_price", "cap", "amount")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    unit: str
    quantity: str
    unit_price: str
    cap: str
    amount: str
    def __init__(self, unit: _Optional[str] = ..., quantity: _Optional[str] = ..., unit_price: _Optional[str] = ..., cap: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class BudgetAccount(_message.Message):
    __slots__ = ("kind", "window", "cap", "remaining", "remaining_after", "runs_remaining")
    KIND_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    REMAINING_AFTER_FIELD_NUMBER: _ClassVar[int]
    RUNS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    kind: str
    window: str
    cap: str
    remaining: str
    remaining_after: str
    runs_remaining: int
    def __init__(self, kind: _Optional[str] = ..., window: _Optional[str] = ..., cap: _Optional[str] = ..., remaining: _Optional[str] = ..., remaining_after: _Optional[str] = ..., runs_remaining: _Optional[int] = ...) -> None: ...
