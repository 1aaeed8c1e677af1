from yumen.v1 import catalog_pb2 as _catalog_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Signed(_message.Message):
    __slots__ = ("payload", "signature")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("connector_id", "datasets", "software_version", "quality", "verification_offers")
    CONNECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_OFFERS_FIELD_NUMBER: _ClassVar[int]
    connector_id: str
    datasets: _containers.RepeatedCompositeFieldContainer[_catalog_pb2.Dataset]
    software_version: str
    quality: _containers.RepeatedCompositeFieldContainer[Signed]
    verification_offers: _containers.RepeatedCompositeFieldContainer[Signed]
    def __init__(self, connector_id: _Optional[str] = ..., datasets: _Optional[_Iterable[_Union[_catalog_pb2.Dataset, _Mapping]]] = ..., software_version: _Optional[str] = ..., quality: _Optional[_Iterable[_Union[Signed, _Mapping]]] = ..., verification_offers: _Optional[_Iterable[_Union[Signed, _Mapping]]] = ...) -> None: ...

class JobTicket(_message.Message):
    __slots__ = ("ticket", "algorithm_source", "he_context")
    TICKET_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_SOURCE_FIELD_NUMBER: _ClassVar[int]
    HE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ticket: Signed
    algorithm_source: bytes
    he_context: bytes
    def __init__(self, ticket: _Optional[_Union[Signed, _Mapping]] = ..., algorithm_source: _Optional[bytes] = ..., he_context: _Optional[bytes] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("receipt", "ciphertext")
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    receipt: Signed
    ciphertext: bytes
    def __init__(self, receipt: _Optional[_Union[Signed, _Mapping]] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("at_unix_ms",)
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    at_unix_ms: int
    def __init__(self, at_unix_ms: _Optional[int] = ...) -> None: ...

class Reexecution(_message.Message):
    __slots__ = ("ticket", "algorithm_source")
    TICKET_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ticket: Signed
    algorithm_source: bytes
    def __init__(self, ticket: _Optional[_Union[Signed, _Mapping]] = ..., algorithm_source: _Optional[bytes] = ...) -> None: ...

class ConnectorMessage(_message.Message):
    __slots__ = ("hello", "receipt", "heartbeat", "reexecuted", "quality", "verified", "destroyed", "start")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REEXECUTED_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    DESTROYED_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    receipt: Receipt
    heartbeat: Heartbeat
    reexecuted: Signed
    quality: Signed
    verified: Signed
    destroyed: Signed
    start: JobStart
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., reexecuted: _Optional[_Union[Signed, _Mapping]] = ..., quality: _Optional[_Union[Signed, _Mapping]] = ..., verified: _Optional[_Union[Signed, _Mapping]] = ..., destroyed: _Optional[_Union[Signed, _Mapping]] = ..., start: _Optional[_Union[JobStart, _Mapping]] = ...) -> None: ...

class JobStart(_message.Message):
    __slots__ = ("job_id", "dataset", "ticket_digest")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TICKET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    dataset: str
    ticket_digest: str
    def __init__(self, job_id: _Optional[str] = ..., dataset: _Optional[str] = ..., ticket_digest: _Optional[str] = ...) -> None: ...

class JobStartAnswer(_message.Message):
    __slots__ = ("job_id", "dataset", "go", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    GO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    dataset: str
    go: bool
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., dataset: _Optional[str] = ..., go: bool = ..., reason: _Optional[str] = ...) -> None: ...

class JobStop(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("broker_id", "accepted_datasets", "refused_datasets")
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_DATASETS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_DATASETS_FIELD_NUMBER: _ClassVar[int]
    broker_id: str
    accepted_datasets: _containers.RepeatedScalarFieldContainer[str]
    refused_datasets: _containers.RepeatedCompositeFieldContainer[DatasetRefusal]
    def __init__(self, broker_id: _Optional[str] = ..., accepted_datasets: _Optional[_Iterable[str]] = ..., refused_datasets: _Optional[_Iterable[_Union[DatasetRefusal, _Mapping]]] = ...) -> None: ...

class DatasetRefusal(_message.Message):
    __slots__ = ("dataset", "reason")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    reason: str
    def __init__(self, dataset: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class VerificationOrder(_message.Message):
    __slots__ = ("order", "sealed")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    order: Signed
    sealed: bytes
    def __init__(self, order: _Optional[_Union[Signed, _Mapping]] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class BrokerMessage(_message.Message):
    __slots__ = ("welcome", "ticket", "heartbeat", "reexecute", "feedback", "verify", "start_answer", "stop")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REEXECUTE_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    START_ANSWER_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    ticket: JobTicket
    heartbeat: Heartbeat
    reexecute: Reexecution
    feedback: Signed
    verify: VerificationOrder
    start_answer: JobStartAnswer
    stop: JobStop
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., ticket: _Optional[_Union[JobTicket, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., reexecute: _Optional[_Union[Reexecution, _Mapping]] = ..., feedback: _Optional[_Union[Signed, _Mapping]] = ..., verify: _Optional[_Union[VerificationOrder, _Mapping]] = ..., start_answer: _Optional[_Union[JobStartAnswer, _Mapping]] = ..., stop: _Optional[_Union[JobStop, _Mapping]] = ...) -> None: ...
