"""TransparencyLog: durable appends, proofs for any past size, checkpoints, thread safety."""

from __future__ import annotations

import threading

import pytest

from yumen.audit import (
    Checkpoint,
    MerkleTree,
    NoteVerifier,
    SQLiteLogStorage,
    TransparencyLog,
    decode_entry,
    encode_entry,
    verify_consistency,
    verify_inclusion,
    leaf_hash,
)
from yumen.errors import Code, YumenError

from audit_samples import ORIGIN, sample_entries


def test_stored_tree_agrees_with_the_in_memory_reference_at_every_size(log):
    entries = sample_entries(5)
    reference = MerkleTree()
    for i, e in enumerate(entries):
        assert log.append(e) == i
        reference.append_leaves([encode_entry(e)])
    n = len(entries)
    for size in range(n + 1):
        assert log.root(size) == reference.root(size)
        for index in range(size):
            assert log.inclusion_proof(index, size) == reference.inclusion_proof(index, size)
        for old in range(size + 1):
            assert log.consistency_proof(old, size) == reference.consistency_proof(old, size)


def test_proofs_verify_against_a_signed_checkpoint(log):
    log.append_many(sample_entries(4))
    cp = Checkpoint.open(log.checkpoint(), NoteVerifier.parse(log.vkey), origin=ORIGIN)
    assert cp.size == log.size == 15
    for i in range(cp.size):
        verify_inclusion(index=i, size=cp.size, leaf_hash=leaf_hash(log.leaf(i)), proof=log.inclusion_proof(i), root=cp.root)
    verify_consistency(old_size=6, new_size=cp.size, old_root=log.root(6), new_root=cp.root, proof=log.consistency_proof(6))


def test_entries_survive_reopening_and_appends_continue(tmp_path, key):
    path = tmp_path / "broker.db"
    lg = TransparencyLog(SQLiteLogStorage(path), origin=ORIGIN, signing_key=key)
    lg.append_many(sample_entries(2))
    root, size = lg.root(), lg.size
    lg.close()
    again = TransparencyLog(SQLiteLogStorage(path), origin=ORIGIN, signing_key=key)
    assert (again.size, again.root()) == (size, root)
    again.append(sample_entries(1)[0])
    assert [e for _, e in again.entries(0, 1)] == [sample_entries(1)[0]]
    assert again.root(size) == root
    again.close()


def test_two_writers_on_one_database_stay_linear(tmp_path, key):
    path = tmp_path / "shared.db"
    a = TransparencyLog(SQLiteLogStorage(path), origin=ORIGIN, signing_key=key)
    b = TransparencyLog(SQLiteLogStorage(path), origin=ORIGIN, signing_key=key)
    es = sample_entries(2)
    assert a.append(es[0]) == 0
    assert b.append(es[1]) == 1  # b's view was stale; it reloads and retries
    assert a.append(es[2]) == 2
    ref = MerkleTree()
    ref.append_leaves(encode_entry(e) for e in es[:3])
    assert a.root() == b.root(3) == ref.root()
    a.close()
    b.close()


def test_concurrent_appends_from_threads_get_distinct_indices(log):
    es = sample_entries(10)
    got: list[int] = []
    lock = threading.Lock()

    def work(chunk):
        for e in chunk:
            i = log.append(e)
            with lock:
                got.append(i)

    threads = [threading.Thread(target=work, args=(es[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(len(es)))
    ref = MerkleTree()
    ref.append_leaves(log.leaf(i) for i in range(log.size))
    assert log.root() == ref.root()
    assert sorted(encode_entry(e) for e in es) == sorted(log.leaf(i) for i in range(log.size))


def test_out_of_range_requests_are_user_errors(log):
    log.append_many(sample_entries(1))
    with pytest.raises(YumenError) as e:
        log.inclusion_proof(6, 6)
    assert e.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(YumenError):
        log.consistency_proof(3, 99)
    with pytest.raises(YumenError) as e:
        log.leaf(99)
    assert e.value.code is Code.NOT_FOUND
    with pytest.raises(YumenError):
        list(log.entries(2, 99))


def test_append_leaves_refuses_bytes_that_are_not_an_entry(log):
    with pytest.raises(YumenError) as e:
        log.append_leaves([b'{"type":"x"}'])
    assert e.value.code is Code.VERIFICATION_FAILED
    assert log.size == 0
    leaf = encode_entry(sample_entries(1)[0])
    assert log.append_leaves([leaf]) == [0]
    assert decode_entry(log.leaf(0)) == sample_entries(1)[0]
