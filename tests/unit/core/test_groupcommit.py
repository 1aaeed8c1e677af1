"""Group commit: shared fsyncs, yet each block atomic, isolated and durable when it returns."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from yumen.groupcommit import GroupCommit


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


@pytest.fixture
def db(tmp_path: Path) -> tuple[Path, GroupCommit]:
    path = tmp_path / "g.db"
    setup = _open(path)
    setup.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    setup.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
    setup.execute("INSERT INTO counter VALUES (0)")
    setup.close()
    return path, GroupCommit(_open(path))


def _committed(path: Path, sql: str) -> list[tuple]:
    other = _open(path)  # another connection sees only committed state
    try:
        return other.execute(sql).fetchall()
    finally:
        other.close()


def test_concurrent_blocks_all_commit_in_order_with_fewer_commits_than_blocks(db: tuple[Path, GroupCommit]) -> None:
    path, group = db
    start = threading.Barrier(16)

    def writer(k: int) -> None:
        start.wait()
        for i in range(25):
            with group.transaction() as conn:
                # read-modify-write: lost updates would show if blocks were not serialised
                (n,) = conn.execute("SELECT n FROM counter").fetchone()
                conn.execute("UPDATE counter SET n = ?", (n + 1,))
                conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k * 1000 + i, n))
            # returned: the block is committed, visible to any other connection
            assert _committed(path, f"SELECT count(*) FROM t WHERE k = {k * 1000 + i}") == [(1,)]

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _committed(path, "SELECT n FROM counter") == [(400,)]
    # every block saw a distinct counter value: one at a time, each after the previous
    assert sorted(v for (v,) in _committed(path, "SELECT v FROM t")) == list(range(400))
    assert group.commits < 400


def test_a_failing_block_is_rolled_back_alone(db: tuple[Path, GroupCommit]) -> None:
    path, group = db
    inside = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def slow_good() -> None:
        with group.transaction() as conn:
            conn.execute("INSERT INTO t (k, v) VALUES (1, 1)")
            inside.set()
            release.wait(5)

    def bad() -> None:
        try:
            with group.transaction() as conn:
                conn.execute("INSERT INTO t (k, v) VALUES (2, 2)")
                raise RuntimeError("refused")
        except RuntimeError as e:
            errors.append(e)

    first = threading.Thread(target=slow_good)
    first.start()
    inside.wait(5)
    second = threading.Thread(target=bad)
    second.start()
    release.set()
    first.join()
    second.join()
    assert [str(e) for e in errors] == ["refused"]
    assert _committed(path, "SELECT k FROM t") == [(1,)]
    with group.transaction() as conn:  # the connection goes on working
        conn.execute("INSERT INTO t (k, v) VALUES (3, 3)")
    assert _committed(path, "SELECT k FROM t ORDER BY k") == [(1,), (3,)]


def test_a_failed_commit_fails_every_block_of_the_batch(db: tuple[Path, GroupCommit]) -> None:
    path, group = db
    setup = _open(path)
    # a deferred constraint fails only at COMMIT, after both blocks ended well
    setup.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    setup.execute("CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
    setup.close()
    group.connection.execute("PRAGMA foreign_keys = ON")
    inside, release = threading.Event(), threading.Event()
    outcomes: list[str] = []

    def first() -> None:
        try:
            with group.transaction() as conn:
                conn.execute("INSERT INTO t (k, v) VALUES (10, 10)")
                inside.set()
                release.wait(5)
            outcomes.append("ok")
        except sqlite3.Error:
            outcomes.append("failed")

    def second() -> None:
        try:
            with group.transaction() as conn:
                conn.execute("INSERT INTO child (p) VALUES (99)")  # no parent 99
            outcomes.append("ok")
        except sqlite3.Error:
            outcomes.append("failed")

    a = threading.Thread(target=first)
    a.start()
    inside.wait(5)
    b = threading.Thread(target=second)
    b.start()
    while group._waiting == 0:  # second is queued behind first: they share the batch
        threading.Event().wait(0.001)
    release.set()
    a.join()
    b.join()
    assert outcomes == ["failed", "failed"]
    assert _committed(path, "SELECT count(*) FROM t WHERE k = 10") == [(0,)]
    with group.transaction() as conn:
        conn.execute("INSERT INTO t (k, v) VALUES (11, 11)")
    assert _committed(path, "SELECT count(*) FROM t WHERE k = 11") == [(1,)]
