from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class License(_message.Message):
    __slots__ = ("id", "organization", "group", "purposes", "levels", "valid_from", "valid_until", "status")
    ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    organization: str
    group: str
    purposes: _containers.RepeatedScalarFieldContainer[str]
    levels: _containers.RepeatedScalarFieldContainer[str]
    valid_from: str
    valid_until: str
    status: str
    def __init__(self, id: _Optional[str] = ..., organization: _Optional[str] = ..., group: _Optional[str] = ..., purposes: _Optional[_Iterable[str]] = ..., levels: _Optional[_Iterable[str]] = ..., valid_from: _Optional[str] = ..., valid_until: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class LicenseChange(_message.Message):
    __slots__ = ("id", "action", "valid_until", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    action: str
    valid_until: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., action: _Optional[str] = ..., valid_until: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListLicensesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLicensesResponse(_message.Message):
    __slots__ = ("licenses",)
    LICENSES_FIELD_NUMBER: _ClassVar[int]
    licenses: _containers.RepeatedCompositeFieldContainer[License]
    def __init__(self, licenses: _Optional[_Iterable[_Union[License, _Mapping]]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("version", "model", "rules", "settings", "replaces")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    version: str
    model: str
    rules: str
    settings: str
    replaces: str
    def __init__(self, version: _Optional[str] = ..., model: _Optional[str] = ..., rules: _Optional[str] = ..., settings: _Optional[str] = ..., replaces: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class GetAccountsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LedgerRow(_message.Message):
    __slots__ = ("license", "dataset", "period", "spent", "runs")
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    license: str
    dataset: str
    period: str
    spent: str
    runs: int
    def __init__(self, license: _Optional[str] = ..., dataset: _Optional[str] = ..., period: _Optional[str] = ..., spent: _Optional[str] = ..., runs: _Optional[int] = ...) -> None: ...

class BillTotal(_message.Message):
    __slots__ = ("operator", "currency", "amount", "jobs")
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    operator: str
    currency: str
    amount: str
    jobs: int
    def __init__(self, operator: _Optional[str] = ..., currency: _Optional[str] = ..., amount: _Optional[str] = ..., jobs: _Optional[int] = ...) -> None: ...

class Accounts(_message.Message):
    __slots__ = ("ledger", "bills")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    BILLS_FIELD_NUMBER: _ClassVar[int]
    ledger: _containers.RepeatedCompositeFieldContainer[LedgerRow]
    bills: _containers.RepeatedCompositeFieldContainer[BillTotal]
    def __init__(self, ledger: _Optional[_Iterable[_Union[LedgerRow, _Mapping]]] = ..., bills: _Optional[_Iterable[_Union[BillTotal, _Mapping]]] = ...) -> None: ...

class ReexecuteRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DatasetReexecution(_message.Message):
    __slots__ = ("dataset", "department", "dataset_version", "logged_commitment", "recomputed_commitment", "matches", "error", "report", "signature")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOGGED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    department: str
    dataset_version: str
    logged_commitment: str
    recomputed_commitment: str
    matches: bool
    error: str
    report: bytes
    signature: bytes
    def __init__(self, dataset: _Optional[str] = ..., department: _Optional[str] = ..., dataset_version: _Optional[str] = ..., logged_commitment: _Optional[str] = ..., recomputed_commitment: _Optional[str] = ..., matches: bool = ..., error: _Optional[str] = ..., report: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ReexecutionReport(_message.Message):
    __slots__ = ("job_id", "datasets")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetReexecution]
    def __init__(self, job_id: _Optional[str] = ..., datasets: _Optional[_Iterable[_Union[DatasetReexecution, _Mapping]]] = ...) -> None: ...

class RevokeCertificateRequest(_message.Message):
    __slots__ = ("fingerprint", "name", "reason")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    name: str
    reason: str
    def __init__(self, fingerprint: _Optional[str] = ..., name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokedCertificate(_message.Message):
    __slots__ = ("fingerprint", "name", "reason", "revoked_by", "at_unix_ms")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    name: str
    reason: str
    revoked_by: str
    at_unix_ms: int
    def __init__(self, fingerprint: _Optional[str] = ..., name: _Optional[str] = ..., reason: _Optional[str] = ..., revoked_by: _Optional[str] = ..., at_unix_ms: _Optional[int] = ...) -> None: ...

class ListRevokedRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRevokedResponse(_message.Message):
    __slots__ = ("certificates",)
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    certificates: _containers.RepeatedCompositeFieldContainer[RevokedCertificate]
    def __init__(self, certificates: _Optional[_Iterable[_Union[RevokedCertificate, _Mapping]]] = ...) -> None: ...
