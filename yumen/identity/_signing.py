"""Signed payloads (job tickets, receipts).

A payload is canonical JSON. The signature covers ``b"yumen:" + purpose + b"\\n" +
payload`` so a signature made for one purpose (a receipt) can never be replayed as
another (a ticket), and never as a TLS handshake signature made with the same key.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from yumen.errors import Code, YumenError


def _message(purpose: str, payload: bytes) -> bytes:
    return b"yumen:" + purpose.encode() + b"\n" + payload


def sign_payload(key: ec.EllipticCurvePrivateKey, purpose: str, payload: bytes) -> bytes:
    return key.sign(_message(purpose, payload), ec.ECDSA(hashes.SHA256()))


def verify_payload(
    public_key: ec.EllipticCurvePublicKey | x509.Certificate, purpose: str, payload: bytes, signature: bytes
) -> None:
    """Raise ``VERIFICATION_FAILED`` unless ``signature`` is valid for ``payload``."""
    if isinstance(public_key, x509.Certificate):
        public_key = public_key.public_key()  # type: ignore[assignment]
    try:
        public_key.verify(signature, _message(purpose, payload), ec.ECDSA(hashes.SHA256()))  # type: ignore[union-attr]
    except InvalidSignature:
        raise YumenError(Code.VERIFICATION_FAILED, f"the {purpose} signature does not verify") from None
