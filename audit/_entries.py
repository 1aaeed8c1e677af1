"""The log's entry types and their one byte encoding.

A leaf is the canonical JSON (:func:`yumen.canonical.canonical_json`) of an entry's
``to_dict()``: an object with ``"type"``, ``"v"`` (the entry format version, 1) and the
entry's fields. Decoding is strict: an unknown type, a missing or unknown field, a value of
the wrong kind, or bytes that are not the canonical encoding of what they decode to all
raise, so every entry has exactly one leaf and an auditor's decoder agrees with the
broker's byte for byte.

Entries carry ids, digests, decisions and metering, never data values beyond released
results. Numbers that must be exact (ε, money) are decimal strings, and floats are refused
everywhere, including inside ``details``: float formatting differs between languages
(``1e-07`` in Python, ``1e-7`` in JavaScript), and a log that another implementation
re-encodes differently cannot be verified by it.

Every type has a ``details`` mapping for fields whose set is still in flux; it is part of
the leaf like any other field.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from yumen.canonical import canonical_json
from yumen.errors import Code, YumenError

__all__ = [
    "ENTRY_FORMAT_VERSION",
    "Entry",
    "DatasetRegistered",
    "PolicyChanged",
    "LicenseChanged",
    "JobDecided",
    "JobExecuted",
    "JobReleased",
    "StewardshipRecorded",
    "CatalogueChanged",
    "ChargeRecorded",
    "ENTRY_TYPES",
    "encode_entry",
    "decode_entry",
    "entry_from_dict",
]

ENTRY_FORMAT_VERSION = 1

_DIGEST = re.compile(r"^[a-z0-9]+:[0-9a-f]{32,128}$")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def _bad(message: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, message, hint=hint)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Field kinds. Each field declares one in its metadata; validation, decoding and
# documentation all read the same table.
_ID = "id"  # non-empty string
_TEXT = "text"  # any string, may be empty
_DIGEST_K = "digest"  # "<algorithm>:<hex>"
_OPT_DIGEST = "optional-digest"  # digest or ""
_DECIMAL_K = "decimal"  # exact non-negative decimal string, e.g. "0.25"
_FLAG = "flag"  # bool
_IDS = "ids"  # non-empty list of non-empty strings
_MAP = "map"  # JSON object without floats
_TIME_K = "time"  # RFC 3339 UTC, e.g. 2026-11-27T03:30:00.000000Z
_B64 = "base64"  # non-empty standard base64 (a signature)


def _f(kind: str, **kw: Any) -> Any:
    return dataclasses.field(metadata={"kind": kind}, **kw)


def _no_floats(value: Any, where: str) -> None:
    if isinstance(value, float):
        raise _bad(
            f"{where} holds the float {value!r}; log entries carry no floats",
            "write exact numbers as decimal strings (\"0.25\") or integers",
        )
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise _bad(f"{where} has a non-string key {k!r}")
            _no_floats(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_floats(v, f"{where}[{i}]")


def _check(kind: str, name: str, value: Any, where: str) -> Any:
    """Validate one field; return its normalised value (tuples for lists, plain-JSON maps)."""
    label = f"{where}.{name}"
    if kind == _FLAG:
        if not isinstance(value, bool):
            raise _bad(f"{label} must be true or false, got {value!r}")
        return value
    if kind == _IDS:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
            raise _bad(f"{label} must be a non-empty list of ids")
        if not all(isinstance(v, str) and v for v in value):
            raise _bad(f"{label} must hold non-empty strings")
        return tuple(value)
    if kind == _MAP:
        if not isinstance(value, Mapping):
            raise _bad(f"{label} must be a mapping")
        _no_floats(value, label)
        try:
            return json.loads(canonical_json(dict(value)))
        except (TypeError, ValueError) as e:
            raise _bad(f"{label} is not plain JSON: {e}") from None
    if not isinstance(value, str):
        raise _bad(f"{label} must be a string, got {type(value).__name__}")
    if kind == _ID and not value:
        raise _bad(f"{label} must not be empty")
    if kind == _DIGEST_K and not _DIGEST.match(value):
        raise _bad(f"{label} {value!r} is not a digest", "write it as sha256:<64 hex digits>")
    if kind == _OPT_DIGEST and value and not _DIGEST.match(value):
        raise _bad(f"{label} {value!r} is not a digest", "write it as sha256:<64 hex digits>, or leave it empty")
    if kind == _DECIMAL_K and not _DECIMAL.match(value):
        raise _bad(f"{label} {value!r} is not a plain decimal", "write it like \"0.25\" (no exponent, no trailing zeros)")
    if kind == _TIME_K and not _TIME.match(value):
        raise _bad(f"{label} {value!r} is not an RFC 3339 UTC time", "write it like 2026-11-27T03:30:00Z")
    if kind == _B64 and not (value and _BASE64.match(value) and len(value) % 4 == 0):
        raise _bad(f"{label} is not non-empty standard base64")
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Entry:
    """Base of every entry type. ``TYPE`` names the type inside the leaf."""

    TYPE: ClassVar[str] = ""

    time: str = _f(_TIME_K, default_factory=_now)

    def __post_init__(self) -> None:
        specs = _SPECS.get(type(self))
        if specs is None:
            raise YumenError(Code.INTERNAL, f"{type(self).__name__} is not a log entry type")
        for name, kind in specs:
            object.__setattr__(self, name, _check(kind, name, getattr(self, name), self.TYPE))
        self._validate()

    def _validate(self) -> None:
        """Cross-field rules of a type."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.TYPE, "v": ENTRY_FORMAT_VERSION}
        for name, _kind in _SPECS[type(self)]:
            value = getattr(self, name)
            d[name] = list(value) if isinstance(value, tuple) else value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Entry":
        """Strict inverse of :meth:`to_dict`; ``Entry.from_dict`` dispatches on ``"type"``."""
        if not isinstance(d, Mapping):
            raise _bad("an entry must be a JSON object")
        if cls is Entry:
            return entry_from_dict(d)
        if d.get("type") != cls.TYPE:
            raise _bad(f"expected a {cls.TYPE} entry, got type {d.get('type')!r}")
        if d.get("v") != ENTRY_FORMAT_VERSION or isinstance(d.get("v"), bool):
            raise _bad(
                f"{cls.TYPE}: entry format version {d.get('v')!r} is not supported (this reader knows v{ENTRY_FORMAT_VERSION})",
                "upgrade the reader",
            )
        names = _FIELD_NAMES[cls]
        keys = set(d) - {"type", "v"}
        unknown = sorted(keys - names)
        missing = sorted(names - keys)
        if unknown:
            raise _bad(f"{cls.TYPE}: unknown field(s) {', '.join(unknown)}")
        if missing:
            raise _bad(f"{cls.TYPE}: missing field(s) {', '.join(missing)}")
        return cls(**{k: d[k] for k in names})


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetRegistered(Entry):
    """A department registered (or re-versioned) a dataset; ``version`` is its content digest."""

    TYPE: ClassVar[str] = "dataset_registered"

    dataset_id: str = _f(_ID)
    version: str = _f(_DIGEST_K)
    department: str = _f(_ID)
    registration_digest: str = _f(_DIGEST_K)
    level: str = _f(_ID)
    details: dict[str, Any] = _f(_MAP, default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyChanged(Entry):
    """A new policy version took effect; decisions name it by ``policy_version``."""

    TYPE: ClassVar[str] = "policy_changed"

    policy_version: str = _f(_DIGEST_K)
    previous_version: str = _f(_OPT_DIGEST, default="")
    changed_by: str = _f(_ID)
    summary: str = _f(_TEXT, default="")
    details: dict[str, Any] = _f(_MAP, default_factory=dict)


_LICENSE_ACTIONS = ("issued", "updated", "suspended", "revoked")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LicenseChanged(Entry):
    """A license was issued, updated, suspended or revoked."""

    TYPE: ClassVar[str] = "license_changed"

    license_id: str = _f(_ID)
    operator: str = _f(_ID)
    action: str = _f(_ID)
    license_digest: str = _f(_OPT_DIGEST, default="")
    changed_by: str = _f(_ID)
    details: dict[str, Any] = _f(_MAP, default_factory=dict)

    def _validate(self) -> None:
        if self.action not in _LICENSE_ACTIONS:
            raise _bad(f"license_changed.action {self.action!r} is not one of {', '.join(_LICENSE_ACTIONS)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobDecided(Entry):
    """The broker's policy decision on a job, allowed or denied, with what it was based on."""

    TYPE: ClassVar[str] = "job_decided"

    job_id: str = _f(_ID)
    allowed: bool = _f(_FLAG)
    policy_version: str = _f(_DIGEST_K)
    matched_rule: str = _f(_TEXT, default="")
    obligations: dict[str, Any] = _f(_MAP, default_factory=dict)
    operator: str = _f(_ID)
    license_id: str = _f(_TEXT, default="")
    datasets: tuple[str, ...] = _f(_IDS)
    tier: str = _f(_ID)
    purpose: str = _f(_ID)
    epsilon: str = _f(_DECIMAL_K)
    reason: str = _f(_TEXT, default="")
    request_digest: str = _f(_OPT_DIGEST, default="")
    details: dict[str, Any] = _f(_MAP, default_factory=dict)

    def _validate(self) -> None:
        if not self.allowed and not self.reason:
            raise _bad(f"job_decided {self.job_id}: a denial needs a reason a person can act on")


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobExecuted(Entry):
    """A connector's signed receipt for one dataset of a job (one entry per connector)."""

    TYPE: ClassVar[str] = "job_executed"

    job_id: str = _f(_ID)
    connector: str = _f(_ID)
    dataset_id: str = _f(_ID)
    dataset_version: str = _f(_DIGEST_K)
    algorithm_digest: str = _f(_OPT_DIGEST, default="")
    sandbox_backend: str = _f(_TEXT, default="")
    runtime_digest: str = _f(_OPT_DIGEST, default="")
    mechanism: str = _f(_ID)
    mechanism_params: dict[str, Any] = _f(_MAP, default_factory=dict)
    epsilon_charged: str = _f(_DECIMAL_K)
    output_commitment: str = _f(_DIGEST_K)
    metering: dict[str, Any] = _f(_MAP, default_factory=dict)
    receipt_signature: str = _f(_B64)
    details: dict[str, Any] = _f(_MAP, default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobReleased(Entry):
    """A result left the broker for the operator; ``bill`` is what was charged."""

    TYPE: ClassVar[str] = "job_released"

    job_id: str = _f(_ID)
    result_digest: str = _f(_DIGEST_K)
    bill: dict[str, Any] = _f(_MAP, default_factory=dict)
    details: dict[str, Any] = _f(_MAP, default_factory=dict)


_STEWARDSHIP_KINDS = ("verification", "version_destroyed", "quality_report")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StewardshipRecorded(Entry):
    """A department's signed statement outside a job: a verification answer, the destruction of
    an expired retained version, or (kind ``quality_report``) the digest of a version's quality
    report that reached the broker after the version was logged (``details.quality``). ``statement`` is the signed payload, decoded; the leaf keeps it
    exactly (no floats: statements carry ids, digests, integers and text)."""

    TYPE: ClassVar[str] = "stewardship"

    kind: str = _f(_ID)
    dataset_id: str = _f(_ID)
    dataset_version: str = _f(_OPT_DIGEST, default="")
    department: str = _f(_ID)
    connector: str = _f(_ID)
    statement: dict[str, Any] = _f(_MAP, default_factory=dict)
    statement_signature: str = _f(_B64)
    details: dict[str, Any] = _f(_MAP, default_factory=dict)

    def _validate(self) -> None:
        if self.kind not in _STEWARDSHIP_KINDS:
            raise _bad(f"stewardship.kind {self.kind!r} is not one of {', '.join(_STEWARDSHIP_KINDS)}")


_CATALOGUE_KINDS = ("cap", "price", "revenue_rule", "allowed_revenue", "authorization")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CatalogueChanged(Entry):
    """A change of the price catalogue (docs/billing.md): a cap or revenue setting by the
    authorizing body's administrator, an actual price by the operating body. ``fields`` are
    the change's values as strings; the entry's ``time`` is when it was made."""

    TYPE: ClassVar[str] = "catalogue_changed"

    kind: str = _f(_ID)
    changed_by: str = _f(_ID)
    role: str = _f(_ID)
    fields: dict[str, Any] = _f(_MAP, default_factory=dict)
    details: dict[str, Any] = _f(_MAP, default_factory=dict)

    def _validate(self) -> None:
        if self.kind not in _CATALOGUE_KINDS:
            raise _bad(f"catalogue_changed.kind {self.kind!r} is not one of {', '.join(_CATALOGUE_KINDS)}")


_CHARGE_KINDS = ("hold", "settle", "release")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChargeRecorded(Entry):
    """A step of a job's charge: the ``hold`` of its quote at acceptance, its ``settle``ment from
    the departments' signed metering, or the ``release`` of the hold when it failed before any
    data was touched. ``amount`` is exact CNY; ``details.lines`` the priced units (quantity,
    unit price, cap, amount), ``details.shares`` a settlement's revenue per dataset."""

    TYPE: ClassVar[str] = "charge"

    job_id: str = _f(_ID)
    kind: str = _f(_ID)
    license_id: str = _f(_ID)
    operator: str = _f(_ID)
    product: str = _f(_TEXT)
    purpose: str = _f(_ID)
    amount: str = _f(_DECIMAL_K)
    currency: str = _f(_ID)
    details: dict[str, Any] = _f(_MAP, default_factory=dict)

    def _validate(self) -> None:
        if self.kind not in _CHARGE_KINDS:
            raise _bad(f"charge.kind {self.kind!r} is not one of {', '.join(_CHARGE_KINDS)}")


ENTRY_TYPES: dict[str, type[Entry]] = {
    cls.TYPE: cls
    for cls in (DatasetRegistered, PolicyChanged, LicenseChanged, JobDecided, JobExecuted, JobReleased,
                StewardshipRecorded, CatalogueChanged, ChargeRecorded)
}
_SPECS: dict[type[Entry], tuple[tuple[str, str], ...]] = {
    cls: tuple((f.name, f.metadata["kind"]) for f in dataclasses.fields(cls)) for cls in ENTRY_TYPES.values()
}
_FIELD_NAMES: dict[type[Entry], frozenset[str]] = {cls: frozenset(n for n, _ in s) for cls, s in _SPECS.items()}


# Cross-field rules of each type, as expressions over the decoded dict ``d``. They mirror
# the ``_validate`` methods; a test checks both paths refuse the same entries.
_FAST_RULES: dict[str, str] = {
    "job_decided": '(d["allowed"] or d["reason"] != "")',
    "license_changed": 'd["action"] in _LICENSE_ACTIONS',
    "stewardship": 'd["kind"] in _STEWARDSHIP_KINDS',
    "catalogue_changed": 'd["kind"] in _CATALOGUE_KINDS',
    "charge": 'd["kind"] in _CHARGE_KINDS',
}

_FAST_EXPR = {
    _ID: 'type({v}) is str and {v} != ""',
    _TEXT: "type({v}) is str",
    _DIGEST_K: "type({v}) is str and _digest({v}) is not None",
    _OPT_DIGEST: 'type({v}) is str and ({v} == "" or _digest({v}) is not None)',
    _DECIMAL_K: "type({v}) is str and _decimal({v}) is not None",
    _FLAG: "type({v}) is bool",
    _IDS: 'type({v}) is list and {v} != [] and all(type(x) is str and x != "" for x in {v})',
    _MAP: "type({v}) is dict",
    _TIME_K: "type({v}) is str and _time({v}) is not None",
    _B64: 'type({v}) is str and {v} != "" and len({v}) % 4 == 0 and _b64({v}) is not None',
}


def _compile_validator(cls: type[Entry]) -> Any:
    """A flat predicate ``valid(d) -> bool`` for one entry type, generated from its field table.

    Verifying an export checks every leaf; one generated boolean expression per type costs
    a third of the generic field loop. It only says yes or no: on no, the generic path runs
    and raises with the reason, so messages come from one place.
    """
    terms = [
        f'len(d) == {len(_SPECS[cls]) + 2}',
        f'd.get("v") == {ENTRY_FORMAT_VERSION}',
        'type(d.get("v")) is int',
    ]
    for name, kind in _SPECS[cls]:
        terms.append(f"{name!r} in d")
        terms.append("(" + _FAST_EXPR[kind].format(v=f"d[{name!r}]") + ")")
    if cls.TYPE in _FAST_RULES:
        terms.append(_FAST_RULES[cls.TYPE])
    source = "def valid(d):\n    return (" + "\n        and ".join(terms) + ")\n"
    namespace: dict[str, Any] = {
        "_digest": _DIGEST.match,
        "_decimal": _DECIMAL.match,
        "_time": _TIME.match,
        "_b64": _BASE64.match,
        "_LICENSE_ACTIONS": _LICENSE_ACTIONS,
        "_STEWARDSHIP_KINDS": _STEWARDSHIP_KINDS,
        "_CATALOGUE_KINDS": _CATALOGUE_KINDS,
        "_CHARGE_KINDS": _CHARGE_KINDS,
    }
    exec(compile(source, f"<validator {cls.TYPE}>", "exec"), namespace)  # noqa: S102 - source built from the field table above
    return namespace["valid"]


_VALIDATORS: dict[str, Any] = {t: _compile_validator(cls) for t, cls in ENTRY_TYPES.items()}


def _entry_type_of(d: Any) -> str:
    """Validate a freshly parsed leaf without building the entry; returns its type or raises."""
    t = d.get("type") if type(d) is dict else None
    valid = _VALIDATORS.get(t) if type(t) is str else None
    if valid is not None and valid(d):
        return d["type"]
    return _from_json_dict(d).TYPE  # raises with the reason


#: The canonical encoder (same settings as :func:`yumen.canonical.canonical_json`), built
#: once: ``json.dumps`` with non-default settings builds an encoder per call, which is half
#: the cost of re-encoding a leaf. A test checks the two agree.
_canonical_str = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def _reject_float(text: str) -> Any:
    raise _bad(f"the number {text} is not an integer; log entries carry no floats")


def _from_json_dict(d: Any) -> Entry:
    """Build an entry from freshly parsed JSON (floats already refused by the parser).

    The fast path of decoding: the type's generated validator checks every field at once,
    and the entry is built without the constructor's defensive copies (nothing else holds
    the parsed maps). Anything the validator refuses goes through :func:`entry_from_dict`,
    whose checks raise with the reason.
    """
    cls = _type_of(d.get("type")) if type(d) is dict else None
    if cls is not None and _VALIDATORS[cls.TYPE](d):
        obj = object.__new__(cls)
        for name, kind in _SPECS[cls]:
            value = d[name]
            object.__setattr__(obj, name, tuple(value) if kind == _IDS else value)
        return obj
    return entry_from_dict(d)


def _type_of(name: Any) -> type[Entry] | None:
    return ENTRY_TYPES.get(name) if type(name) is str else None


def entry_from_dict(d: Mapping[str, Any]) -> Entry:
    """Decode a JSON object into its entry type; unknown types and fields raise INVALID_ARGUMENT."""
    if not isinstance(d, Mapping):
        raise _bad("an entry must be a JSON object")
    cls = _type_of(d.get("type"))
    if cls is None:
        raise _bad(f"unknown entry type {d.get('type')!r}", f"known types: {', '.join(ENTRY_TYPES)}")
    return cls.from_dict(d)


def encode_entry(entry: Entry) -> bytes:
    """The leaf bytes of ``entry``."""
    if not isinstance(entry, Entry) or type(entry) not in _FIELD_NAMES:
        raise _bad(f"only log entry types can be appended, not {type(entry).__name__}")
    return canonical_json(entry.to_dict())


def decode_entry(leaf: bytes) -> Entry:
    """The entry a leaf encodes. Raises ``VERIFICATION_FAILED`` unless ``leaf`` is exactly its encoding."""
    try:
        d = json.loads(bytes(leaf).decode("utf-8"), parse_float=_reject_float, parse_constant=_reject_float)
        entry = _from_json_dict(d)
    except (UnicodeDecodeError, ValueError) as e:
        raise YumenError(Code.VERIFICATION_FAILED, f"the leaf is not UTF-8 JSON: {e}") from None
    except YumenError as e:
        raise YumenError(Code.VERIFICATION_FAILED, f"the leaf is not a valid entry: {e.message}") from None
    if _canonical_str(d).encode("utf-8") != leaf:
        raise YumenError(
            Code.VERIFICATION_FAILED,
            f"the {entry.TYPE} leaf is not in canonical encoding (sorted keys, no spaces, UTF-8)",
        )
    return entry
