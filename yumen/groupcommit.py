"""Group commit for SQLite: concurrent write transactions share one commit and one fsync.

With ``journal_mode=WAL`` and ``synchronous=FULL`` every COMMIT waits for an fsync of the
write-ahead log (a few milliseconds on a virtual disk), and SQLite has one write lock per
database. A server that commits once per request is therefore capped at one request per
fsync, and threads that find the lock taken sleep in SQLite's busy handler (1, 2, 5, 10 …
100 ms steps) instead of waking when it is free.

:class:`GroupCommit` puts one writer connection behind a mutex. Each caller's block runs in
a savepoint of a transaction that may already hold blocks of earlier callers. When a block
ends and other callers are waiting for the mutex, the transaction is handed on still open;
the block that finds nobody waiting (or that fills the batch) commits it once, for everyone.

What does not change:

* **Durability.** :meth:`transaction` returns only after the COMMIT that contains the
  caller's block has returned (durable under ``synchronous=FULL``). Nothing a block
  wrote is acted on by its caller before then.
* **Atomicity and isolation of each block.** A block that raises is rolled back to its own
  savepoint and leaves the others in the batch untouched. Blocks run one at a time, in
  the order they took the mutex, and each sees what the earlier blocks of its batch wrote,
  exactly as if they had committed one after another; other connections see none of a batch
  until all of it commits.
* **Failure.** When the COMMIT itself fails, the whole batch is rolled back and every caller
  in it gets the error; nobody was told its write succeeded.

Rejected: ``synchronous=NORMAL`` (durable only up to the last WAL checkpoint, which a
budget ledger and a transparency log cannot accept), and a background committer thread
(one more thread to stop and to fail; here the last block of a batch commits it).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator

__all__ = ["GroupCommit"]


class _Batch:
    __slots__ = ("members", "done", "error")

    def __init__(self) -> None:
        self.members = 0  # blocks that ended well and wait for this batch's commit
        self.done = threading.Event()
        self.error: BaseException | None = None


class GroupCommit:
    """Serialised write transactions on ``conn`` whose commits are shared (module docstring).

    ``conn`` must be opened with ``isolation_level=None`` and ``check_same_thread=False`` and
    be used for nothing else. ``max_batch`` bounds how many blocks wait for one commit.
    """

    def __init__(self, conn: sqlite3.Connection, *, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._conn = conn
        self._max_batch = max_batch
        self._mutex = threading.Lock()  # held by the one block running in the open transaction
        self._count = threading.Lock()  # guards _waiting
        self._waiting = 0
        self._batch: _Batch | None = None  # the open transaction, if any
        self.commits = 0  # COMMITs issued (each one fsync), for tests and metrics

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in the shared transaction; return once it is durably committed."""
        with self._count:
            self._waiting += 1
        self._mutex.acquire()
        with self._count:
            self._waiting -= 1
        conn = self._conn
        try:
            if self._batch is None:
                conn.execute("BEGIN IMMEDIATE")
                self._batch = _Batch()
            batch = self._batch
            conn.execute("SAVEPOINT group_member")
        except BaseException:
            self._end(joined=False)
            raise
        try:
            yield conn
        except BaseException:
            try:
                conn.execute("ROLLBACK TO group_member")
                conn.execute("RELEASE group_member")
            except BaseException as e:  # the connection is unusable: fail the whole batch
                self._fail_open(e)
                raise
            self._end(joined=False)
            raise
        try:
            conn.execute("RELEASE group_member")
        except BaseException as e:
            self._fail_open(e)
            raise
        batch.members += 1
        self._end(joined=True)
        batch.done.wait()
        if batch.error is not None:
            raise batch.error

    def _end(self, *, joined: bool) -> None:
        """Called with the mutex held when a block ends: hand the open transaction on to a
        waiting block, or commit it; then release the mutex."""
        batch = self._batch
        with self._count:
            waiting = self._waiting
        if batch is not None and waiting and batch.members < self._max_batch:
            self._mutex.release()  # the next block commits it or hands it on in turn
            return
        self._batch = None
        try:
            if batch is not None:
                if batch.members:
                    try:
                        self._conn.execute("COMMIT")
                        self.commits += 1
                    except BaseException as e:
                        batch.error = e
                        self._rollback()
                else:
                    self._rollback()  # only failed blocks: nothing to keep
        finally:
            self._mutex.release()
            if batch is not None:
                batch.done.set()

    def _fail_open(self, error: BaseException) -> None:
        """The open transaction cannot go on: roll it back and fail every block in it."""
        batch, self._batch = self._batch, None
        self._rollback()
        self._mutex.release()
        if batch is not None:
            batch.error = error
            batch.done.set()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
