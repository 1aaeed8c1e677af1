"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed-note envelopes, Ed25519.

A checkpoint note reads::

    <origin>
    <tree size, decimal>
    <root hash, standard base64>
    <optional extension lines>

    — <key name> <base64(key id[4] ‖ Ed25519 signature[64])>

The signature covers the body including its final newline (not the blank line). The key
id is the first four bytes of ``SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)``, and the
verifier key is published as ``<name>+<8 hex key id>+<base64(0x01 ‖ public key)>``, the
form Go's ``golang.org/x/mod/sumdb/note`` and the transparency-dev tooling read. The key
name is the log's origin unless configured otherwise.

Verification is strict and raises ``VERIFICATION_FAILED`` with the reason: a malformed
envelope, control characters, a signature line that does not parse, a missing signature by
the trusted key, or a bad signature. Signatures by other keys (witness cosignatures, say)
are ignored, as the spec requires, but one by the trusted name and id that fails rejects
the note.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import logging
import os
import re
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from yumen.errors import Code, YumenError

from ._merkle import HASH_SIZE

__all__ = [
    "Checkpoint",
    "NoteSigner",
    "NoteVerifier",
    "sign_note",
    "open_note",
    "generate_log_key",
    "save_log_key",
    "load_log_key",
]

_log = logging.getLogger(__name__)

_ALG_ED25519 = 0x01
_EM_DASH_PREFIX = "\u2014 "
_MAX_SIGNATURES = 100
_MAX_NOTE_BYTES = 1 << 20
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,19})$")


def _fail(message: str, hint: str = "") -> YumenError:
    return YumenError(Code.VERIFICATION_FAILED, message, hint=hint)


def _check_key_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name) or any(ord(c) < 0x20 for c in name):
        raise YumenError(
            Code.CONFIG,
            f"key name {name!r} is not valid for a signed note",
            hint="use the log origin, e.g. yumen.example.gov/log (no spaces, no '+')",
        )


def _key_id(name: str, public_raw: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([_ALG_ED25519]) + public_raw).digest()[:4]


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoteVerifier:
    """A trusted Ed25519 note key: name, key id and public key."""

    name: str
    public_key: bytes  # raw 32-byte Ed25519 public key

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        if len(self.public_key) != 32:
            raise YumenError(Code.CONFIG, "an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> bytes:
        return _key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        """The verifier key text: ``<name>+<hex id>+<base64(0x01 ‖ key)>``."""
        blob = base64.b64encode(bytes([_ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    @classmethod
    def parse(cls, vkey: str) -> "NoteVerifier":
        """Parse verifier key text; raises ``CONFIG`` when it is malformed or its id does not match."""
        text = vkey.strip()
        parts = text.split("+", 2)
        bad = YumenError(
            Code.CONFIG,
            "the log verifier key is malformed",
            hint="it looks like <name>+<8 hex digits>+<base64>; copy the log.vkey file as published",
        )
        if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
            raise bad
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError):
            raise bad from None
        if len(blob) != 33 or blob[0] != _ALG_ED25519:
            raise YumenError(Code.CONFIG, "the log verifier key is not an Ed25519 note key (type 0x01, 32 bytes)")
        verifier = cls(name=parts[0], public_key=blob[1:])
        if verifier.key_id.hex() != parts[1]:
            raise YumenError(Code.CONFIG, "the log verifier key's id does not match its name and key", hint=bad.hint)
        return verifier

    def verify_signature(self, body: bytes, signature: bytes) -> None:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, body)
        except InvalidSignature:
            raise _fail(f"the signature by {self.name} ({self.key_id.hex()}) does not verify") from None


class NoteSigner:
    """Signs note bodies with the log's Ed25519 key under a key name (normally the origin)."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        _check_key_name(name)
        if not isinstance(key, Ed25519PrivateKey):
            raise YumenError(Code.CONFIG, "the log signing key must be an Ed25519 key")
        self._name = name
        self._key = key
        self._verifier = NoteVerifier(name=name, public_key=_public_raw(key.public_key()))

    @property
    def name(self) -> str:
        return self._name

    @property
    def verifier(self) -> NoteVerifier:
        return self._verifier

    def signature_line(self, body: bytes) -> str:
        blob = self._verifier.key_id + self._key.sign(body)
        return f"{_EM_DASH_PREFIX}{self._name} {base64.b64encode(blob).decode()}\n"


def _check_text(text: str, what: str) -> None:
    for c in text:
        if ord(c) < 0x20 and c != "\n":
            raise _fail(f"{what} contains the control character U+{ord(c):04X}")


def sign_note(body: str, signer: NoteSigner) -> str:
    """``body`` plus a blank line and ``signer``'s signature line."""
    if not body.endswith("\n") or "\n\n" in body or body.startswith("\n"):
        raise YumenError(Code.INTERNAL, "a note body must be non-empty lines, each ending in a newline")
    _check_text(body, "the note body")
    return body + "\n" + signer.signature_line(body.encode("utf-8"))


def open_note(note: str | bytes, verifier: NoteVerifier) -> str:
    """Verify ``note`` against ``verifier`` and return its body. Raises ``VERIFICATION_FAILED``."""
    if isinstance(note, bytes):
        if len(note) > _MAX_NOTE_BYTES:
            raise _fail("the note is larger than 1 MiB")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail("the note is not valid UTF-8") from None
    if len(note.encode("utf-8")) > _MAX_NOTE_BYTES:
        raise _fail("the note is larger than 1 MiB")
    _check_text(note, "the note")
    if not note.endswith("\n"):
        raise _fail("the note does not end with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise _fail("the note has no blank line between its text and its signatures")
    body, sig_block = note[: split + 1], note[split + 2 :]
    lines = sig_block[:-1].split("\n")
    if not sig_block or len(lines) > _MAX_SIGNATURES:
        raise _fail(f"the note must carry 1 to {_MAX_SIGNATURES} signature lines")
    body_bytes = body.encode("utf-8")
    verified = False
    for n, line in enumerate(lines, start=1):
        if not line.startswith(_EM_DASH_PREFIX):
            raise _fail(f"signature line {n} does not start with an em dash (U+2014) and a space")
        fields = line[len(_EM_DASH_PREFIX) :].split(" ")
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise _fail(f"signature line {n} is not '— <name> <base64 signature>'")
        name, blob_text = fields
        try:
            blob = base64.b64decode(blob_text, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(f"signature line {n} is not base64") from None
        if len(blob) < 5:
            raise _fail(f"signature line {n} is too short to hold a key id and a signature")
        if name != verifier.name or blob[:4] != verifier.key_id:
            continue  # another key (a witness, say): not ours to judge
        if len(blob) != 4 + 64:
            raise _fail(f"signature line {n} by {name} is not an Ed25519 signature")
        verifier.verify_signature(body_bytes, blob[4:])
        verified = True
    if not verified:
        raise _fail(
            f"the note carries no signature by the trusted key {verifier.name}+{verifier.key_id.hex()}",
            "check that --vkey is this log's published key",
        )
    return body


# --------------------------------------------------------------------------- checkpoint


@dataclasses.dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A tlog-checkpoint body: origin, tree size, root hash, optional extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin or any(ord(c) < 0x20 for c in self.origin):
            raise YumenError(Code.CONFIG, f"checkpoint origin {self.origin!r} is not a single non-empty line")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise YumenError(Code.INTERNAL, f"checkpoint size {self.size!r} is not a non-negative integer")
        if len(self.root) != HASH_SIZE:
            raise YumenError(Code.INTERNAL, "a checkpoint root is a 32-byte SHA-256 hash")
        object.__setattr__(self, "root", bytes(self.root))
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for ext in self.extensions:
            if not ext or "\n" in ext:
                raise YumenError(Code.INTERNAL, "checkpoint extension lines must be non-empty single lines")

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)

    def sign(self, signer: NoteSigner) -> str:
        return sign_note(self.body(), signer)

    @classmethod
    def parse_body(cls, body: str) -> "Checkpoint":
        """Parse a checkpoint body (already verified). Raises ``VERIFICATION_FAILED`` when malformed."""
        if not body.endswith("\n"):
            raise _fail("the checkpoint body does not end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise _fail("the checkpoint body needs origin, size and root lines")
        origin, size_text, root_text, *extensions = lines
        if not _SIZE.match(size_text):
            raise _fail(f"checkpoint size {size_text!r} is not a decimal number")
        try:
            root = base64.b64decode(root_text, validate=True)
        except (binascii.Error, ValueError):
            raise _fail("checkpoint root is not base64") from None
        if len(root) != HASH_SIZE:
            raise _fail("checkpoint root is not a 32-byte hash")
        if any(not ext for ext in extensions):
            raise _fail("checkpoint has an empty extension line")
        try:
            return cls(origin=origin, size=int(size_text), root=root, extensions=tuple(extensions))
        except YumenError as e:
            raise _fail(f"malformed checkpoint: {e.message}") from None

    @classmethod
    def open(cls, note: str | bytes, verifier: NoteVerifier, *, origin: str | None = None) -> "Checkpoint":
        """Verify a signed checkpoint note and parse it; checks the origin when given."""
        cp = cls.parse_body(open_note(note, verifier))
        if origin is not None and cp.origin != origin:
            raise _fail(f"the checkpoint is for origin {cp.origin!r}, expected {origin!r}")
        return cp


# --------------------------------------------------------------------------- key files


def generate_log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_log_key(key: Ed25519PrivateKey, path: str | Path) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by its owner only (0600); never overwrite."""
    path = Path(path)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise YumenError(
            Code.ALREADY_EXISTS, f"{path} already exists", hint="a log key is never overwritten; choose another path"
        ) from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)
    _log.info("wrote log signing key %s", path)


def load_log_key(path: str | Path) -> Ed25519PrivateKey:
    """Read the log key; refuses a file that group or others can read."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise YumenError(Code.CONFIG, f"log key {path} does not exist", hint="create one with generate_log_key/save_log_key") from None
    except OSError as e:
        raise YumenError(Code.CONFIG, f"cannot read log key {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise YumenError(
            Code.CONFIG, f"log key {path} is accessible by group or others", hint=f"run: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise YumenError(Code.CONFIG, f"log key {path} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise YumenError(Code.CONFIG, f"log key {path} is not an Ed25519 key")
    return key
