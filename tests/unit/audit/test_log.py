"""TransparencyLog: durable appends, proofs for any past size, checkpoints, thread safety."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yumen.audit import (
    Checkpoint,
    MerkleTree,
    NoteVerifier,
    SQLiteLogStorage,
    TransparencyLog,
    decode_entry,
    encode_entry,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
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


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8), data=st.data())
def test_stored_proofs_match_the_reference_across_random_batch_boundaries(tmp_path_factory, key, batches, data):
    pool = [encode_entry(e) for e in sample_entries(3)]
    lg = TransparencyLog(SQLiteLogStorage(tmp_path_factory.mktemp("p") / "l.db"), origin=ORIGIN, signing_key=key)
    ref = MerkleTree()
    n = 0
    for b in batches:
        leaves = [pool[(n + i) % len(pool)] for i in range(b)]
        assert lg.append_leaves(leaves) == list(range(n, n + b))
        ref.append_leaves(leaves)
        n += b
        assert lg.root() == ref.root()
    size = data.draw(st.integers(min_value=1, max_value=n))
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    old = data.draw(st.integers(min_value=0, max_value=size))
    assert lg.inclusion_proof(index, size) == ref.inclusion_proof(index, size)
    assert lg.consistency_proof(old, size) == ref.consistency_proof(old, size)
    assert lg.root(size) == ref.root(size)
    lg.close()


class _GatedStorage:
    """SQLite storage whose first commit waits for a gate: lets a test queue appends behind it."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.commits: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def append(self, *, start, leaves, nodes):
        if not self.commits:
            self.gate.wait(10)
        self.commits.append(len(leaves))
        self.inner.append(start=start, leaves=leaves, nodes=nodes)


def test_concurrent_appends_are_group_committed_and_each_returns_its_own_indices(tmp_path, key):
    import time

    storage = _GatedStorage(SQLiteLogStorage(tmp_path / "g.db"))
    lg = TransparencyLog(storage, origin=ORIGIN, signing_key=key)
    es = sample_entries(2)
    results: dict[int, list[int]] = {}

    def work(k):
        results[k] = lg.append_many(es[k : k + 1]) if k else lg.append_many(es[:1])

    first = threading.Thread(target=work, args=(0,))
    first.start()
    deadline = time.monotonic() + 5
    while not lg._leader_active and time.monotonic() < deadline:
        time.sleep(0.001)
    others = [threading.Thread(target=work, args=(k,)) for k in range(1, 6)]
    for t in others:
        t.start()
    while len(lg._pending) < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    storage.gate.set()
    for t in [first, *others]:
        t.join()
    assert storage.commits == [1, 5]  # the five queued appends shared one transaction
    assert sorted(i for r in results.values() for i in r) == list(range(6))
    for k in range(1, 6):
        (i,) = results[k]
        assert lg.leaf(i) == encode_entry(es[k])
    ref = MerkleTree()
    ref.append_leaves(lg.leaf(i) for i in range(6))
    assert lg.root() == ref.root()
