from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetStewardshipRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class Stewardship(_message.Message):
    __slots__ = ("dataset", "quality", "quality_signature", "feedback_count", "verification_offer", "verification_signature", "connector_certificate", "quality_certificate", "quality_digest", "quality_version_count")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_COUNT_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_OFFER_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    QUALITY_VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    quality: bytes
    quality_signature: bytes
    feedback_count: int
    verification_offer: bytes
    verification_signature: bytes
    connector_certificate: bytes
    quality_certificate: bytes
    quality_digest: str
    quality_version_count: int
    def __init__(self, dataset: _Optional[str] = ..., quality: _Optional[bytes] = ..., quality_signature: _Optional[bytes] = ..., feedback_count: _Optional[int] = ..., verification_offer: _Optional[bytes] = ..., verification_signature: _Optional[bytes] = ..., connector_certificate: _Optional[bytes] = ..., quality_certificate: _Optional[bytes] = ..., quality_digest: _Optional[str] = ..., quality_version_count: _Optional[int] = ...) -> None: ...

class Feedback(_message.Message):
    __slots__ = ("dataset", "version", "category", "message")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: str
    category: str
    message: str
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[str] = ..., category: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class FeedbackAck(_message.Message):
    __slots__ = ("id", "count", "delivered")
    ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    id: str
    count: int
    delivered: bool
    def __init__(self, id: _Optional[str] = ..., count: _Optional[int] = ..., delivered: bool = ...) -> None: ...

class VerificationRequest(_message.Message):
    __slots__ = ("request_id", "dataset", "purpose", "fields", "sealed", "want_mismatches")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    WANT_MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    dataset: str
    purpose: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    sealed: bytes
    want_mismatches: bool
    def __init__(self, request_id: _Optional[str] = ..., dataset: _Optional[str] = ..., purpose: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., sealed: _Optional[bytes] = ..., want_mismatches: bool = ...) -> None: ...

class VerificationAnswer(_message.Message):
    __slots__ = ("request_id", "answer", "mismatched", "message", "log_index", "statement", "signature")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    MISMATCHED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    answer: str
    mismatched: _containers.RepeatedScalarFieldContainer[str]
    message: str
    log_index: int
    statement: bytes
    signature: bytes
    def __init__(self, request_id: _Optional[str] = ..., answer: _Optional[str] = ..., mismatched: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ..., log_index: _Optional[int] = ..., statement: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
