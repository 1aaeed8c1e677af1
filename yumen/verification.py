"""Verification queries (核验): the protocol records shared by operator, broker and department.

An operator holds a record about a person (an identifier and some claimed field values) and
asks whether it matches the department's data. The answer is yes or no (optionally which
fields mismatch, when the department's policy allows), and no row ever leaves.

1. The department publishes a signed *offer* per verifiable dataset: its policy (subject
   column, approved fields, purposes, caps) and an X25519 public key. The signature is the
   connector's certificate key, so the operator checks it against a certificate issued by the
   data space CA for that department: a broker cannot substitute its own key.
2. The operator *seals* ``{"subject": …, "claims": {field: value}}`` to that key (X25519,
   HKDF-SHA256, ChaCha20-Poly1305), with the request id, dataset, license, purpose and
   fields as associated data: the broker relays bytes it cannot open, and cannot re-bind
   them to another license or purpose without the department's decryption failing.
3. The broker checks the license, the purpose, the approved fields and the license's daily
   cap, signs an *order* naming the sealed bytes' digest, and sends both to the connector.
4. The department opens the request, derives the subject's *keyed hash*
   HMAC-SHA256(K, dataset ‖ identifier) with a key K only it holds, counts the request
   against the license's and the subject's caps, looks the identifier up in its index,
   compares the claims, and signs an *answer* naming the keyed hash, never the identifier.
5. The broker logs every answer (``stewardship`` entry, kind ``verification``) and returns
   it. Auditors can count verifications per license and per subject from the log.

docs/verification.md states what this guarantees and what it does not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import unicodedata
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from yumen.canonical import canonical_json
from yumen.errors import Code, YumenError

__all__ = [
    "ANSWER_PURPOSE",
    "MAX_SEALED_BYTES",
    "OFFER_PURPOSE",
    "ORDER_PURPOSE",
    "check_offer",
    "normalize",
    "open_sealed",
    "request_aad",
    "seal",
    "seal_request",
]

OFFER_PURPOSE = "verification-offer"
ORDER_PURPOSE = "verification-order"
ANSWER_PURPOSE = "verification-answer"

MAX_SEALED_BYTES = 4096
MAX_IDENTIFIER = 256
_SEAL_VERSION = b"\x01"
_INFO = b"yumen verification v1"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _bad(message: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, message, hint=hint)


def normalize(value: Any) -> str:
    """The text a claimed or stored value is compared as: NFC, trimmed; integral numbers without ".0"."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return unicodedata.normalize("NFC", str(value)).strip()


def request_aad(*, request_id: str, dataset: str, license: str, purpose: str, fields: list[str]) -> bytes:
    """What a sealed request is bound to: opening it under any other request fails."""
    return canonical_json({"request_id": request_id, "dataset": dataset, "license": license, "purpose": purpose,
                           "fields": sorted(fields)})


def _key(shared: bytes, eph: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + eph + recipient).derive(shared)


def seal(public_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt ``plaintext`` to the X25519 ``public_key`` (raw 32 bytes), bound to ``aad``."""
    if len(public_key) != 32:
        raise _bad("the department's verification key is not a 32-byte X25519 key")
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(public_key))
    nonce = os.urandom(12)
    return _SEAL_VERSION + eph_pub + nonce + ChaCha20Poly1305(_key(shared, eph_pub, public_key)).encrypt(nonce, plaintext, aad)


def open_sealed(private_key: X25519PrivateKey, sealed: bytes, aad: bytes) -> bytes:
    """Decrypt a sealed request; raises INVALID_ARGUMENT when it was not sealed to this key for ``aad``."""
    if not 1 + 32 + 12 + 16 <= len(sealed) <= MAX_SEALED_BYTES or sealed[:1] != _SEAL_VERSION:
        raise _bad("the sealed request is malformed")
    eph_pub, nonce, body = sealed[1:33], sealed[33:45], sealed[45:]
    recipient = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        return ChaCha20Poly1305(_key(shared, eph_pub, recipient)).decrypt(nonce, body, aad)
    except (InvalidTag, ValueError):
        raise _bad("the sealed request does not open under this department's key for this request",
                   "seal it to the key of the dataset's current offer, with the same request id, license, purpose and fields") from None


def check_request_id(request_id: str) -> str:
    if not _REQUEST_ID.match(request_id or ""):
        raise _bad(f"request id {request_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return request_id


def check_offer(offer_payload: bytes, signature: bytes, certificate_pem: bytes, *, ca_pem: bytes, dataset: str,
                department: str) -> dict[str, Any]:
    """The offer, once its signature verifies against a connector certificate of ``department``
    issued by the data space CA (``ca_pem``); raises VERIFICATION_FAILED otherwise."""
    from cryptography import x509

    from yumen.identity import Role, identity_from_pem, verify_payload

    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - any failure means the certificate is not the CA's
        raise YumenError(Code.VERIFICATION_FAILED, "the department's certificate was not issued by the data space CA") from None
    who = identity_from_pem(certificate_pem)
    if who.role is not Role.CONNECTOR or who.department != department:
        raise YumenError(Code.VERIFICATION_FAILED, f"the offer is not signed by a connector of department {department}")
    verify_payload(cert, OFFER_PURPOSE, offer_payload, signature)
    offer: dict[str, Any] = json.loads(offer_payload)
    if offer.get("dataset") != dataset:
        raise YumenError(Code.VERIFICATION_FAILED, f"the offer is for dataset {offer.get('dataset')!r}, not {dataset!r}")
    return offer


def seal_request(offer: dict[str, Any], *, request_id: str, license: str, purpose: str, subject: str,
                 claims: dict[str, Any]) -> bytes:
    """The sealed bytes of one request, after checking it against the offer's policy."""
    check_request_id(request_id)
    policy = offer["policy"]
    if not subject or len(subject) > MAX_IDENTIFIER:
        raise _bad(f"the subject identifier must be 1 to {MAX_IDENTIFIER} characters")
    if not claims:
        raise _bad("name at least one field to verify", f"verifiable fields: {', '.join(policy['fields'])}")
    extra = sorted(set(claims) - set(policy["fields"]))
    if extra:
        raise _bad(f"field(s) {', '.join(extra)} may not be verified on {offer['dataset']}",
                   f"the department approved: {', '.join(policy['fields'])}")
    if purpose not in policy["purposes"]:
        raise _bad(f"the department does not answer verifications for the purpose {purpose}",
                   f"accepted purposes: {', '.join(policy['purposes'])}")
    body = canonical_json({"subject": normalize(subject), "claims": {k: normalize(v) for k, v in claims.items()}})
    aad = request_aad(request_id=request_id, dataset=offer["dataset"], license=license, purpose=purpose,
                      fields=list(claims))
    sealed = seal(base64.b64decode(offer["public_key"]), body, aad)
    if len(sealed) > MAX_SEALED_BYTES:
        raise _bad("the request is too large to seal", "verify fewer or shorter fields")
    return sealed


def sealed_digest(sealed: bytes) -> str:
    return "sha256:" + hashlib.sha256(sealed).hexdigest()
