"""Where the log's leaves and tree nodes live: the ``LogStorage`` contract and its SQLite store.

The store knows nothing about hashing. The :class:`~yumen.audit.TransparencyLog` computes the
leaf hashes and every subtree that an append completes, and hands leaves and nodes to
:meth:`LogStorage.append` together, so they commit in one transaction: a crash never
leaves a leaf without its hash, and proofs read stored nodes instead of rehashing leaves.

``append`` names the index its first leaf must get (``start``) and fails with
``ALREADY_EXISTS`` when the store has moved on. With one writer that never happens; with
several broker replicas on PostgreSQL it is the optimistic-concurrency check (primary-key
conflict on ``log_entries.idx``) that keeps the log linear, and the writer that lost
reloads and retries.

Schema (tables prefixed ``log_`` so the log can share a database with the broker)::

    log_entries(idx INTEGER PRIMARY KEY, leaf BLOB NOT NULL)
    log_nodes(level INTEGER, idx INTEGER, hash BLOB NOT NULL, PRIMARY KEY(level, idx))

:class:`~yumen.audit.PostgresLogStorage` keeps the same two tables (``BIGINT``, ``BYTEA``)
for several broker replicas; one contract test suite runs against both stores.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from yumen.errors import Code, YumenError

from ._merkle import HASH_SIZE, NodeKey

__all__ = ["LogStorage", "SQLiteLogStorage", "StoredNode"]

_log = logging.getLogger(__name__)

#: ``(level, index, hash)``: one complete subtree.
StoredNode = tuple[int, int, bytes]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS log_entries (idx INTEGER PRIMARY KEY, leaf BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS log_nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, "
    "hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID",
)

# Node reads are chunked well below SQLite's expression-depth and parameter limits.
_NODE_CHUNK = 200


@runtime_checkable
class LogStorage(Protocol):
    """Durable, append-only storage of leaves and complete-subtree hashes."""

    def size(self) -> int:
        """Number of leaves committed."""
        ...

    def append(self, *, start: int, leaves: Sequence[bytes], nodes: Sequence[StoredNode]) -> None:
        """Commit ``leaves`` at indices ``start…`` and ``nodes`` in one durable transaction.

        Raises ``YumenError(ALREADY_EXISTS)`` when ``start`` is not the current size, and
        returns only after the transaction is durable.
        """
        ...

    def leaves(self, start: int, end: int) -> list[bytes]:
        """Leaves ``[start, end)``, which must all exist."""
        ...

    def nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        """The stored hashes of ``keys``, which must all exist."""
        ...

    def close(self) -> None: ...


class SQLiteLogStorage:
    """The embedded store: one SQLite file in WAL mode, ``synchronous=FULL``.

    WAL with ``synchronous=FULL`` fsyncs the write-ahead log on every commit, so an append
    that returned survives power loss; readers never block the writer. ``NORMAL`` would be
    faster but only durable up to the last checkpoint of the WAL, which a transparency log
    cannot accept: a signed checkpoint may already cover an entry that is then lost.

    One writer connection is serialised by a lock; reads use one connection per thread, so
    a threaded gRPC server answers proofs while an append is in flight.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        if self._path == ":memory:" or self._path.startswith("file::memory:"):
            raise YumenError(
                Code.CONFIG,
                "the transparency log needs a database file, not an in-memory database",
                hint="pass a path such as /var/lib/yumen/broker.db",
            )
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        with self._write_lock:
            for stmt in _SCHEMA:
                self._writer.execute(stmt)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as e:
            raise YumenError(
                Code.CONFIG, f"cannot open the log database {self._path}: {e}", hint="check the path and its permissions"
            ) from e
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise YumenError(Code.INTERNAL, "the log storage is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @staticmethod
    def _size(conn: sqlite3.Connection) -> int:
        (n,) = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log_entries").fetchone()
        return int(n)

    def size(self) -> int:
        return self._size(self._reader())

    def append(self, *, start: int, leaves: Sequence[bytes], nodes: Sequence[StoredNode]) -> None:
        if self._closed:
            raise YumenError(Code.INTERNAL, "the log storage is closed")
        for level, _idx, h in nodes:
            if len(h) != HASH_SIZE or level < 0:
                raise YumenError(Code.INTERNAL, f"refusing to store a malformed node at level {level}")
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                have = self._size(conn)
                if have != start:
                    raise YumenError(
                        Code.ALREADY_EXISTS,
                        f"the log has {have} entries, the append expected {start}",
                        hint="another writer appended; reload and retry",
                    )
                conn.executemany(
                    "INSERT INTO log_entries (idx, leaf) VALUES (?, ?)",
                    ((start + i, bytes(leaf)) for i, leaf in enumerate(leaves)),
                )
                conn.executemany("INSERT INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def within(self, conn: sqlite3.Connection) -> "_SQLiteWithin":
        """This storage's appends on ``conn``, a connection to the same database file that is
        inside an open write transaction (see ``TransparencyLog.append_within``)."""
        (path,) = [r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"]
        if not path or not os.path.samefile(path, self._path):
            raise YumenError(Code.INTERNAL, f"the connection is to {path or 'no file'}, not to the log database {self._path}")
        if conn.in_transaction is False:
            raise YumenError(Code.INTERNAL, "append_within needs an open write transaction")
        return _SQLiteWithin(conn)

    def leaves(self, start: int, end: int) -> list[bytes]:
        rows = self._reader().execute(
            "SELECT idx, leaf FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end)
        ).fetchall()
        if len(rows) != max(0, end - start) or (rows and (rows[0][0] != start or rows[-1][0] != end - 1)):
            raise YumenError(
                Code.NOT_FOUND,
                f"the log has no entries {start}..{end - 1} (found {len(rows)})",
                hint="ask for a range below the log size",
            )
        return [bytes(r[1]) for r in rows]

    def nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        conn = self._reader()
        found: dict[NodeKey, bytes] = {}
        wanted = list(dict.fromkeys(keys))
        for i in range(0, len(wanted), _NODE_CHUNK):
            chunk = wanted[i : i + _NODE_CHUNK]
            # An OR of point lookups: SQLite answers each from the primary key. A row-value
            # "(level, idx) IN (VALUES ...)" reads the same but scans the table (60 ms at 1M).
            where = " OR ".join("(level = ? AND idx = ?)" for _ in chunk)
            params = [x for key in chunk for x in key]
            for level, idx, h in conn.execute(f"SELECT level, idx, hash FROM log_nodes WHERE {where}", params):
                found[(level, idx)] = bytes(h)
        if len(found) != len(wanted):
            missing = [k for k in wanted if k not in found][:3]
            _log.error("log storage %s is missing tree nodes %s", self._path, missing)
            raise YumenError(Code.INTERNAL, f"the log storage is missing tree nodes {missing}")
        return found

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def __repr__(self) -> str:
        return f"SQLiteLogStorage({self._path!r})"


class _SQLiteWithin:
    """Appends and the reads they need, on a connection inside the caller's write transaction
    (``BEGIN IMMEDIATE`` already holds SQLite's one write lock)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def size(self) -> int:
        return SQLiteLogStorage._size(self._conn)

    def leaves(self, start: int, end: int) -> list[bytes]:
        """Leaves ``[start, end)`` as this transaction sees them (its own appends included)."""
        rows = self._conn.execute("SELECT leaf FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx",
                                  (start, end)).fetchall()
        if len(rows) != max(0, end - start):
            raise YumenError(Code.INTERNAL, f"the log has no entries {start}..{end - 1} in this transaction")
        return [bytes(r[0]) for r in rows]

    def nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        found: dict[NodeKey, bytes] = {}
        for level, idx in keys:
            row = self._conn.execute("SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", (level, idx)).fetchone()
            if row is None:
                raise YumenError(Code.INTERNAL, f"the log storage is missing tree node {(level, idx)}")
            found[(level, idx)] = bytes(row[0])
        return found

    def append(self, *, start: int, leaves: Sequence[bytes], nodes: Sequence[StoredNode]) -> None:
        for level, _idx, h in nodes:
            if len(h) != HASH_SIZE or level < 0:
                raise YumenError(Code.INTERNAL, f"refusing to store a malformed node at level {level}")
        self._conn.executemany("INSERT INTO log_entries (idx, leaf) VALUES (?, ?)",
                               ((start + i, bytes(leaf)) for i, leaf in enumerate(leaves)))
        self._conn.executemany("INSERT INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
