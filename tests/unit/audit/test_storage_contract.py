"""The LogStorage contract, run against every implementation in conftest.STORAGE_FACTORIES."""

from __future__ import annotations

import threading

import pytest

from yumen.audit import LogStorage
from yumen.errors import Code, YumenError


def test_storage_satisfies_the_protocol(storage):
    assert isinstance(storage, LogStorage)
    assert storage.size() == 0


def test_append_commits_leaves_and_nodes_together(storage):
    storage.append(start=0, leaves=[b"a", b"b"], nodes=[(0, 0, b"\x01" * 32), (0, 1, b"\x02" * 32), (1, 0, b"\x03" * 32)])
    assert storage.size() == 2
    assert storage.leaves(0, 2) == [b"a", b"b"]
    assert storage.nodes([(1, 0), (0, 1)]) == {(1, 0): b"\x03" * 32, (0, 1): b"\x02" * 32}


def test_append_at_a_stale_start_fails_and_changes_nothing(storage):
    storage.append(start=0, leaves=[b"a"], nodes=[(0, 0, b"\x01" * 32)])
    with pytest.raises(YumenError) as e:
        storage.append(start=0, leaves=[b"x"], nodes=[(0, 0, b"\x09" * 32)])
    assert e.value.code is Code.ALREADY_EXISTS
    assert storage.leaves(0, 1) == [b"a"] and storage.size() == 1


def test_a_failed_transaction_rolls_back_entirely(storage):
    with pytest.raises(YumenError):
        storage.append(start=0, leaves=[b"a"], nodes=[(0, 0, b"short")])
    assert storage.size() == 0
    with pytest.raises(Exception):
        # a duplicate node key violates the primary key: nothing of the batch may remain
        storage.append(start=0, leaves=[b"a", b"b"], nodes=[(0, 0, b"\x01" * 32), (0, 0, b"\x02" * 32)])
    assert storage.size() == 0


def test_reading_missing_leaves_or_nodes_raises(storage):
    storage.append(start=0, leaves=[b"a"], nodes=[(0, 0, b"\x01" * 32)])
    with pytest.raises(YumenError) as e:
        storage.leaves(0, 2)
    assert e.value.code is Code.NOT_FOUND
    with pytest.raises(YumenError):
        storage.nodes([(3, 0)])


def test_many_nodes_are_read_in_one_call(storage):
    n = 1200  # more than one SQL chunk
    storage.append(start=0, leaves=[b"x"] * n, nodes=[(0, i, i.to_bytes(32, "big")) for i in range(n)])
    got = storage.nodes([(0, i) for i in range(n)])
    assert len(got) == n and got[(0, 1199)] == (1199).to_bytes(32, "big")


def test_concurrent_readers_see_committed_data(storage):
    storage.append(start=0, leaves=[b"a"], nodes=[(0, 0, b"\x01" * 32)])
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(storage.leaves(0, 1))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [[b"a"]] * 4


def test_two_log_replicas_over_one_storage_stay_linear_and_match_the_reference(storage, key):
    from yumen.audit import MerkleTree, TransparencyLog, encode_entry

    from audit_samples import ORIGIN, sample_entries

    a = TransparencyLog(storage, origin=ORIGIN, signing_key=key)
    b = TransparencyLog(storage, origin=ORIGIN, signing_key=key)
    es = sample_entries(4)
    got = a.append_many(es[:5]) + b.append_many(es[5:9]) + a.append_many(es[9:])  # b and a were stale
    assert got == list(range(len(es)))
    ref = MerkleTree()
    ref.append_leaves(encode_entry(e) for e in es)
    assert a.root() == b.root(len(es)) == ref.root()
    for size in (1, 7, len(es)):
        for index in range(0, size, 3):
            assert a.inclusion_proof(index, size) == ref.inclusion_proof(index, size)
        assert b.consistency_proof(size // 2, size) == ref.consistency_proof(size // 2, size)
