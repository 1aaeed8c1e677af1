"""Signed notes interoperate with Go's sumdb/note and checkpoints verify strictly."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from yumen.audit import (
    EMPTY_ROOT,
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    generate_log_key,
    load_log_key,
    open_note,
    save_log_key,
    sign_note,
)
from yumen.errors import Code, YumenError

# The reference vector of golang.org/x/mod/sumdb/note (its package documentation).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"


def _go_signer() -> NoteSigner:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    return NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(seed))


def test_signing_reproduces_the_go_reference_note_byte_for_byte():
    signer = _go_signer()
    assert signer.verifier.vkey == GO_VKEY
    assert sign_note(GO_TEXT, signer) == GO_NOTE


def test_go_reference_note_opens_and_a_changed_text_does_not():
    verifier = NoteVerifier.parse(GO_VKEY)
    assert open_note(GO_NOTE, verifier) == GO_TEXT
    with pytest.raises(YumenError, match="does not verify") as e:
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), verifier)
    assert e.value.code is Code.VERIFICATION_FAILED


@pytest.mark.parametrize(
    "mangle,reason",
    [
        (lambda n: n.replace("\u2014 ", "-- "), "em dash"),
        (lambda n: n.replace("\n\n", "\n"), "blank line"),
        (lambda n: n[:-1], "newline"),
        (lambda n: n.replace("PeterNeumann", "PaulNeumann"), "no signature by the trusted key"),
        (lambda n: n.replace("x08go", "x08g!"), "not base64"),
        (lambda n: n.replace("If you", "If\tyou"), "control character"),
    ],
)
def test_malformed_notes_fail_with_a_reason(mangle, reason):
    with pytest.raises(YumenError, match=reason) as e:
        open_note(mangle(GO_NOTE), NoteVerifier.parse(GO_VKEY))
    assert e.value.code is Code.VERIFICATION_FAILED


def test_other_signers_are_ignored_but_ours_is_required():
    witness = NoteSigner("witness.example", generate_log_key())
    note = GO_NOTE + witness.signature_line(GO_TEXT.encode())
    assert open_note(note, NoteVerifier.parse(GO_VKEY)) == GO_TEXT
    with pytest.raises(YumenError, match="no signature by the trusted key"):
        open_note(note, witness.verifier.__class__(name="other", public_key=witness.verifier.public_key))


def test_vkey_with_a_wrong_id_or_type_is_refused():
    for bad in (GO_VKEY.replace("c74f20a3", "c74f20a4"), "PeterNeumann+c74f20a3", GO_VKEY.replace("+ARpc", "+AhRpc")):
        with pytest.raises(YumenError) as e:
            NoteVerifier.parse(bad)
        assert e.value.code is Code.CONFIG


def test_checkpoint_round_trips_through_a_signed_note():
    signer = NoteSigner("yumen.test/log", generate_log_key())
    cp = Checkpoint(origin="yumen.test/log", size=7, root=bytes(range(32)))
    note = cp.sign(signer)
    assert note.startswith("yumen.test/log\n7\n" + base64.b64encode(bytes(range(32))).decode() + "\n\n\u2014 yumen.test/log ")
    assert Checkpoint.open(note, signer.verifier) == cp
    with pytest.raises(YumenError, match="origin"):
        Checkpoint.open(note, signer.verifier, origin="other/log")


def test_checkpoint_body_with_bad_size_is_refused_even_if_signed():
    signer = NoteSigner("yumen.test/log", generate_log_key())
    root = base64.b64encode(EMPTY_ROOT).decode()
    for body in (f"yumen.test/log\n007\n{root}\n", f"yumen.test/log\n-1\n{root}\n", "yumen.test/log\n1\nAAAA\n"):
        with pytest.raises(YumenError) as e:
            Checkpoint.open(sign_note(body, signer), signer.verifier)
        assert e.value.code is Code.VERIFICATION_FAILED


def test_log_key_is_saved_0600_and_loads_back(tmp_path):
    key = generate_log_key()
    path = tmp_path / "log.key"
    save_log_key(key, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_log_key(path).public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    with pytest.raises(YumenError) as e:
        save_log_key(key, path)
    assert e.value.code is Code.ALREADY_EXISTS
    os.chmod(path, 0o644)
    with pytest.raises(YumenError, match="chmod 600"):
        load_log_key(path)
