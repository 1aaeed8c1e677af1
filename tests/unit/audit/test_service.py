"""The AuditService over a real gRPC server: authorization, proofs, and online verification."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from yumen.audit import (
    AuditClient,
    Checkpoint,
    NoteVerifier,
    SQLiteLogStorage,
    TransparencyLog,
    add_audit_service,
    export,
    verify_consistency,
    verify_export,
    leaf_hash,
    verify_inclusion,
    verify_online,
)
from yumen.errors import Code, YumenError

from audit_samples import ORIGIN, sample_entries


class _Gate:
    def __init__(self):
        self.allow = True
        self.calls = 0

    def __call__(self, context):
        self.calls += 1
        if not self.allow:
            raise YumenError(Code.PERMISSION_DENIED, "only auditors and administrators read the log")


@pytest.fixture
def served(log):
    log.append_many(sample_entries(3))
    gate = _Gate()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_audit_service(server, log, gate)
    port = server.add_insecure_port("127.0.0.1:0")  # mTLS is the broker's; the servicer is what is tested
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield log, AuditClient(channel), gate
    channel.close()
    server.stop(None)


def test_checkpoint_and_proofs_over_grpc_verify(served):
    log, client, gate = served
    signed = client.signed_checkpoint()
    assert signed.vkey == log.vkey
    cp = Checkpoint.open(signed.note, NoteVerifier.parse(log.vkey))
    assert cp.size == 12 and cp.root == log.root()
    p = client.inclusion_proof(5, cp.size)
    assert p.leaf == log.leaf(5)
    verify_inclusion(index=5, size=cp.size, leaf_hash=leaf_hash(p.leaf), proof=p.hashes, root=cp.root)
    verify_consistency(old_size=4, new_size=12, old_root=log.root(4), new_root=cp.root, proof=client.consistency_proof(4, 12))
    assert [i for i, _ in client.leaves(0, 12)] == list(range(12))
    assert gate.calls >= 4


def test_unauthorized_callers_are_refused_with_permission_denied(served):
    _log, client, gate = served
    gate.allow = False
    with pytest.raises(YumenError) as e:
        client.checkpoint()
    assert e.value.code is Code.PERMISSION_DENIED
    with pytest.raises(YumenError) as e:
        list(client.leaves(0, 3))
    assert e.value.code is Code.PERMISSION_DENIED


def test_bad_ranges_become_invalid_argument(served):
    _log, client, _ = served
    with pytest.raises(YumenError) as e:
        client.inclusion_proof(40, 12)
    assert e.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(YumenError):
        list(client.leaves(5, 99))


def test_online_verification_full_and_light_with_state(served, tmp_path):
    log, client, _ = served
    state = tmp_path / "state"
    r = verify_online(client, log.vkey, state)
    assert (r.size, r.entries_checked, r.key_pinned) == (12, 12, True)
    log.append_many(sample_entries(1)[3:])
    r2 = verify_online(client, None, state, full=False)
    assert (r2.previous_size, r2.size, r2.entries_checked) == (12, 15, 0)
    r3 = verify_online(client, None, state)
    assert r3.previous_size == 15


def test_online_verification_catches_a_rewritten_log(served, tmp_path, key):
    log, client, _ = served
    state = tmp_path / "state"
    verify_online(client, log.vkey, state)
    # the operator of a second broker with the same key serves a different history
    forged = TransparencyLog(SQLiteLogStorage(tmp_path / "forged.db"), origin=ORIGIN, signing_key=key)
    es = sample_entries(4)
    forged.append_many(es[:4] + [es[5], es[4]] + es[6:])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_audit_service(server, forged, lambda ctx: None)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(YumenError) as e:
                verify_online(AuditClient(ch), log.vkey, state)
        assert e.value.code is Code.VERIFICATION_FAILED
        assert "entry 4 differs" in e.value.message
    finally:
        server.stop(None)


def test_export_over_grpc_equals_a_local_export(served, tmp_path):
    log, client, _ = served
    export(client, tmp_path / "remote")
    export(log, tmp_path / "local")
    assert (tmp_path / "remote/entries.jsonl").read_bytes() == (tmp_path / "local/entries.jsonl").read_bytes()
    assert verify_export(tmp_path / "remote", log.vkey).size == 12
