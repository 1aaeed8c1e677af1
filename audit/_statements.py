"""Per-entry checks of what departments state in the log, run by ``yumen audit verify``.

* Every connector certificate the log carries (``dataset_registered`` details
  ``connector_certificate_pem``, logged once per certificate, before anything it signed) is
  collected first: its fingerprint is the SHA-256 of its DER, and with the data space CA
  given, it must be a connector certificate that CA issued for the entry's department.
* Every ``job_executed`` entry carries the receipt the department signed: the receipt must
  name the entry's job, dataset and connector, and its signature must verify against the
  certificate whose fingerprint the entry names, logged at an earlier index. A receipt the
  broker forged or altered, or copied from another job, fails here, offline.
* A job that read data carries, in that receipt, a destruction confirmation that is
  verified, has the receipt's own time and names exactly what a job of that shape stages
  (:func:`yumen.destruction.check_confirmation`).
* Every ``stewardship`` entry of kind ``verification`` or ``version_destroyed`` carries the
  department's signed statement, checked the same way; a ``version_destroyed`` statement
  confirms, verified, the destruction of the version it names.

The certificates come from one fast pass over the export; everything else reads only the
entry itself and that map, so it runs inside the (parallel) line checks.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from yumen.destruction import check_confirmation, check_version_destroyed
from yumen.errors import Code, YumenError

__all__ = ["CERTIFICATE_KEY", "Certificates", "check_statements", "collect_certificate"]

CERTIFICATE_KEY = "connector_certificate_pem"  # in dataset_registered details

# signature domains (yumen.identity.sign_payload purposes) of the statements the log carries
_RECEIPT = "receipt"
_STATEMENT_PURPOSES = {"verification": "verification-answer", "version_destroyed": "destruction"}


def _fail(message: str) -> YumenError:
    return YumenError(Code.VERIFICATION_FAILED, message)


class Certificates:
    """Connector certificates found in the log: fingerprint → (index logged, public key)."""

    def __init__(self, ca_pem: bytes | None = None) -> None:
        self.ca = x509.load_pem_x509_certificate(ca_pem) if ca_pem else None
        self.logged: dict[str, tuple[int, str]] = {}  # fingerprint -> (index, PEM); picklable
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"logged": self.logged, "ca": self.ca.public_bytes(Encoding.PEM) if self.ca else None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["ca"])  # type: ignore[misc]
        self.logged = state["logged"]

    def add(self, index: int, pem: str, department: str) -> None:
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            raise _fail(f"entry {index}: the logged connector certificate is not a PEM certificate") from None
        if self.ca is not None:
            from yumen.identity import Role, identity_from_pem

            try:
                self.ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,  # type: ignore[call-arg, arg-type]
                                            ec.ECDSA(cert.signature_hash_algorithm))  # type: ignore[arg-type]
            except (InvalidSignature, TypeError, ValueError):
                raise _fail(f"entry {index}: the logged connector certificate was not issued by the data space CA") from None
            who = identity_from_pem(pem.encode())
            if who.role is not Role.CONNECTOR or who.department != department:
                raise _fail(f"entry {index}: the logged certificate is not a connector certificate of {department}")
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        self.logged.setdefault(fingerprint, (index, pem))

    def key(self, fingerprint: str, index: int, what: str) -> ec.EllipticCurvePublicKey:
        found = self.logged.get(fingerprint)
        if found is None or found[0] >= index:
            raise _fail(f"{what} is signed by connector certificate {fingerprint[:16] or '(none named)'}…, which the log "
                        "does not carry before it")
        key = self._keys.get(fingerprint)
        if key is None:
            key = x509.load_pem_x509_certificate(found[1].encode()).public_key()  # type: ignore[assignment]
            self._keys[fingerprint] = key  # type: ignore[assignment]
        return key  # type: ignore[return-value]


def collect_certificate(entry_type: str, d: dict[str, Any], index: int, certs: Certificates) -> None:
    """Add the connector certificate a ``dataset_registered`` entry carries, if any."""
    if entry_type != "dataset_registered":
        return
    pem = (d.get("details") or {}).get(CERTIFICATE_KEY)
    if pem:
        if not isinstance(pem, str):
            raise _fail(f"entry {index}: {CERTIFICATE_KEY} is not text")
        certs.add(index, pem, str(d.get("department", "")))


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise _fail(f"{what} is missing")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(f"{what} is not base64") from None


def _verify(key: ec.EllipticCurvePublicKey, purpose: str, payload: bytes, signature: bytes, what: str) -> None:
    try:
        key.verify(signature, b"yumen:" + purpose.encode() + b"\n" + payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _fail(f"{what}: the department's signature does not verify (forged or altered)") from None


def _receipt(d: dict[str, Any], index: int, certs: Certificates) -> dict[str, Any]:
    job = f"job {d.get('job_id')}"
    details = d.get("details") or {}
    payload = _b64(details.get("receipt"), f"{job}: the signed receipt in the entry")
    try:
        receipt = json.loads(payload)
    except ValueError:
        raise _fail(f"{job}: the logged receipt is not JSON") from None
    if not isinstance(receipt, dict):
        raise _fail(f"{job}: the logged receipt is not an object")
    for field, logged in (("job_id", d.get("job_id")), ("dataset", d.get("dataset_id")), ("connector", d.get("connector"))):
        if receipt.get(field) != logged:
            raise _fail(f"{job}: the receipt's {field} {receipt.get(field)!r} is not the entry's {logged!r}")
    key = certs.key(str(details.get("connector_certificate", "")), index, f"{job}'s receipt")
    _verify(key, _RECEIPT, payload, _b64(d.get("receipt_signature"), f"{job}: the receipt signature"), f"{job}'s receipt")
    return receipt


def check_statements(entry_type: str, d: dict[str, Any], index: int, certs: Certificates) -> None:
    """Raise ``VERIFICATION_FAILED`` when a department's statement in the entry ``d`` is missing, false or forged."""
    if entry_type == "job_executed":
        check_confirmation(_receipt(d, index, certs))
    elif entry_type == "stewardship" and d.get("kind") in _STATEMENT_PURPOSES:
        kind = d["kind"]
        statement = d.get("statement") or {}
        what = f"the {kind.replace('_', ' ')} statement on {d.get('dataset_id')}"
        from yumen.canonical import canonical_json

        key = certs.key(str((d.get("details") or {}).get("connector_certificate", "")), index, what)
        _verify(key, _STATEMENT_PURPOSES[kind], canonical_json(statement),
                _b64(d.get("statement_signature"), f"{what}: its signature"), what)
        if kind == "version_destroyed":
            check_version_destroyed(statement, str(d.get("dataset_version", "")))

