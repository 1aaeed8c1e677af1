"""Job tickets (broker → connector) and receipts (connector → broker).

Both are canonical-JSON payloads signed by their author with its certificate key
(see :mod:`yumen.identity._signing` for the domain separation). The payload is what
is signed and logged; these records only parse and validate it.

A ticket is addressed to one connector and one dataset, names the policy decision it
rests on, and expires, so a captured ticket cannot be replayed elsewhere or later; the
connector also remembers every ticket it executed and refuses a second delivery.
"""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from yumen.canonical import canonical_json, digest_of, sha256_hex
from yumen.errors import Code, YumenError
from yumen.identity import sign_payload, verify_payload
from yumen.jobs import format_epsilon, parse_epsilon

__all__ = ["Ticket", "Receipt", "ReleasedValue", "TICKET", "RECEIPT"]

TICKET = "ticket"
RECEIPT = "receipt"
_VERSION = 1


def _verified(purpose: str, payload: bytes, signature: bytes, signer: x509.Certificate | ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """The payload as a JSON object, once its signature for ``purpose`` verifies."""
    verify_payload(signer, purpose, payload, signature)
    try:
        doc = json.loads(payload)
    except ValueError as e:
        raise YumenError(Code.VERIFICATION_FAILED, f"{purpose} payload is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise YumenError(Code.VERIFICATION_FAILED, f"{purpose} payload is not a JSON object")
    return doc


def _need(d: dict[str, Any], key: str, kind: type) -> Any:
    if key not in d or not isinstance(d[key], kind):
        raise YumenError(Code.VERIFICATION_FAILED, f"signed payload field {key!r} is missing or not {kind.__name__}")
    return d[key]


def _rho(text: Any) -> Fraction:
    """An exact non-negative ρ written as "n/d"."""
    try:
        rho = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        raise YumenError(Code.VERIFICATION_FAILED, f"signed payload field rho_charged {text!r} is not a fraction") from None
    if rho < 0:
        raise YumenError(Code.VERIFICATION_FAILED, "signed payload field rho_charged is negative")
    return rho


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ticket:
    job_id: str
    broker: str
    connector: str
    department: str
    dataset: str
    dataset_version: str
    operator: str
    license: str
    tier: str
    purpose: str
    epsilon: Fraction
    work: dict[str, Any]  # {"query": {...}} or {"algorithm": {"digest": ..., "outputs": [...], ...}}
    obligations: dict[str, Any]
    policy_version: str
    rule: str
    issued_at_ms: int
    expires_at_ms: int

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["epsilon"] = format_epsilon(self.epsilon)
        d["v"] = _VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Ticket":
        if d.get("v") != _VERSION:
            raise YumenError(Code.VERIFICATION_FAILED, f"unsupported ticket version {d.get('v')!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for name in fields:
            if name == "epsilon":
                kw[name] = parse_epsilon(_need(d, name, str))
            elif name in ("work", "obligations"):
                kw[name] = _need(d, name, dict)
            elif name in ("issued_at_ms", "expires_at_ms"):
                kw[name] = _need(d, name, int)
            else:
                kw[name] = _need(d, name, str)
        return cls(**kw)

    def payload(self) -> bytes:
        return canonical_json(self.to_dict())

    def sign(self, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
        p = self.payload()
        return p, sign_payload(key, TICKET, p)

    @classmethod
    def verify(cls, payload: bytes, signature: bytes, broker: x509.Certificate | ec.EllipticCurvePublicKey) -> "Ticket":
        return cls.from_dict(_verified(TICKET, payload, signature, broker))

    @staticmethod
    def digest_of_payload(payload: bytes) -> str:
        return "sha256:" + sha256_hex(payload)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReleasedValue:
    name: str
    group: str
    value: float
    noise_scale: float
    ci95: float

    def __post_init__(self) -> None:
        for f in (self.value, self.noise_scale, self.ci95):
            if not math.isfinite(f):
                raise YumenError(Code.VERIFICATION_FAILED, f"released value {self.name}/{self.group} is not finite")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReleasedValue":
        return cls(
            name=str(d["name"]), group=str(d.get("group", "")), value=float(d["value"]),
            noise_scale=float(d["noise_scale"]), ci95=float(d["ci95"]),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Receipt:
    """A connector's signed account of one ticket: executed, failed, or refused."""

    job_id: str
    dataset: str
    connector: str
    department: str
    ticket_digest: str
    status: str  # ok | failed | refused
    error: str = ""
    dataset_version: str = ""
    algorithm_digest: str = ""
    backend: str = ""
    runtime_digest: str = ""
    mechanism: str = ""
    mechanism_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    epsilon_charged: Fraction = Fraction(0)  # pure accounting: the ε spent
    rho_charged: Fraction = Fraction(0)  # zCDP accounting: the ρ spent
    values: tuple[ReleasedValue, ...] = ()
    commitment: str = ""
    metering: dict[str, Any] = dataclasses.field(default_factory=dict)
    at_ms: int = 0
    # With homomorphic delivery: the values' ``value`` fields are 0 and the encrypted values
    # travel beside the receipt; this is their SHA-256.
    ciphertext_digest: str = ""
    # What the connector destroyed after the job (its scratch, staged input, block files), by
    # which mechanism, at the receipt's own time, and whether it checked them gone. Its content
    # is fixed by the job's shape (yumen.connectors._destruction). Empty for a refusal.
    destruction: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in ("ok", "failed", "refused"):
            raise YumenError(Code.VERIFICATION_FAILED, f"receipt status {self.status!r} is unknown")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["epsilon_charged"] = format_epsilon(self.epsilon_charged) if self.epsilon_charged else "0"
        if self.rho_charged:
            d["rho_charged"] = f"{self.rho_charged.numerator}/{self.rho_charged.denominator}"
        else:
            del d["rho_charged"]
        d["values"] = [v.to_dict() for v in self.values]
        if not self.destruction:
            del d["destruction"]
        d["v"] = _VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Receipt":
        if d.get("v") != _VERSION:
            raise YumenError(Code.VERIFICATION_FAILED, f"unsupported receipt version {d.get('v')!r}")
        eps = d.get("epsilon_charged", "0")
        return cls(
            job_id=_need(d, "job_id", str), dataset=_need(d, "dataset", str),
            connector=_need(d, "connector", str), department=_need(d, "department", str),
            ticket_digest=_need(d, "ticket_digest", str), status=_need(d, "status", str),
            error=str(d.get("error", "")), dataset_version=str(d.get("dataset_version", "")),
            algorithm_digest=str(d.get("algorithm_digest", "")), backend=str(d.get("backend", "")),
            runtime_digest=str(d.get("runtime_digest", "")), mechanism=str(d.get("mechanism", "")),
            mechanism_params=dict(d.get("mechanism_params", {})),
            epsilon_charged=Fraction(0) if eps == "0" else parse_epsilon(eps),
            rho_charged=_rho(d.get("rho_charged", "0")),
            values=tuple(ReleasedValue.from_dict(v) for v in d.get("values", ())),
            commitment=str(d.get("commitment", "")), metering=dict(d.get("metering", {})),
            at_ms=int(d.get("at_ms", 0)), ciphertext_digest=str(d.get("ciphertext_digest", "")),
            destruction=dict(d.get("destruction") or {}),
        )

    def payload(self) -> bytes:
        return canonical_json(self.to_dict())

    def sign(self, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
        p = self.payload()
        return p, sign_payload(key, RECEIPT, p)

    @classmethod
    def verify(cls, payload: bytes, signature: bytes, signer: x509.Certificate | ec.EllipticCurvePublicKey) -> "Receipt":
        try:
            return cls.from_dict(_verified(RECEIPT, payload, signature, signer))
        except (KeyError, TypeError, ValueError) as e:
            raise YumenError(Code.VERIFICATION_FAILED, f"receipt payload is malformed: {e}") from None

    def digest(self) -> str:
        return digest_of(self.to_dict())
