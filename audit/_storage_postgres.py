"""The ``LogStorage`` contract on PostgreSQL, for several broker replicas sharing one log.

Same two tables as the SQLite store (``log_entries``, ``log_nodes``), in a schema of the
caller's choice. Writers serialise on a transaction-scoped advisory lock and then check
the expected start index, so two replicas never interleave a batch; the one that lost
gets ``ALREADY_EXISTS`` and its :class:`~yumen.audit.TransparencyLog` reloads and
retries. Commits are durable with PostgreSQL's default ``synchronous_commit=on``, which
the store refuses to run without. Bulk leaves and nodes go in with ``COPY``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

from yumen.errors import Code, YumenError

from ._merkle import HASH_SIZE, NodeKey
from ._storage import StoredNode

__all__ = ["PostgresLogStorage"]

_log = logging.getLogger(__name__)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# pg_advisory_xact_lock key: the log's writers in one database serialise on it.
_LOCK_KEY = 0x59554D454E4C4F47  # "YUMENLOG"


class PostgresLogStorage:
    """Leaves and subtree hashes in PostgreSQL (``psycopg`` 3)."""

    def __init__(self, dsn: str, *, schema: str = "public") -> None:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - psycopg is a project dependency
            raise YumenError(Code.CONFIG, "PostgreSQL storage needs the psycopg package", hint="pip install psycopg[binary]") from None
        if not _SCHEMA_NAME.match(schema):
            raise YumenError(Code.CONFIG, f"schema name {schema!r} is not a plain lowercase identifier")
        self._psycopg = psycopg
        self._dsn = dsn
        self._schema = schema
        self._entries = f'"{schema}".log_entries'
        self._nodes = f'"{schema}".log_nodes'
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        with self._write_lock, self._writer.transaction():
            (sync,) = self._writer.execute("SHOW synchronous_commit").fetchone()
            if sync not in ("on", "remote_write", "remote_apply"):
                raise YumenError(
                    Code.CONFIG,
                    f"PostgreSQL synchronous_commit is {sync!r}; the log needs durable commits",
                    hint="set synchronous_commit = on for the log's database or role",
                )
            self._writer.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            self._writer.execute(
                f"CREATE TABLE IF NOT EXISTS {self._entries} (idx BIGINT PRIMARY KEY, leaf BYTEA NOT NULL)"
            )
            self._writer.execute(
                f"CREATE TABLE IF NOT EXISTS {self._nodes} (level SMALLINT NOT NULL, idx BIGINT NOT NULL, "
                "hash BYTEA NOT NULL, PRIMARY KEY (level, idx))"
            )

    def _connect(self) -> Any:
        try:
            conn = self._psycopg.connect(self._dsn, autocommit=True)
        except self._psycopg.Error as e:
            raise YumenError(
                Code.UNAVAILABLE, f"cannot reach the log database: {e.__class__.__name__}", hint="check the DSN and the server"
            ) from None
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _reader(self) -> Any:
        if self._closed:
            raise YumenError(Code.INTERNAL, "the log storage is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _size(self, conn: Any) -> int:
        (n,) = conn.execute(f"SELECT COALESCE(MAX(idx) + 1, 0) FROM {self._entries}").fetchone()
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
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                    have = self._size(conn)
                    if have != start:
                        raise YumenError(
                            Code.ALREADY_EXISTS,
                            f"the log has {have} entries, the append expected {start}",
                            hint="another writer appended; reload and retry",
                        )
                    with conn.cursor() as cur:
                        with cur.copy(f"COPY {self._entries} (idx, leaf) FROM STDIN") as copy:
                            for i, leaf in enumerate(leaves):
                                copy.write_row((start + i, bytes(leaf)))
                        with cur.copy(f"COPY {self._nodes} (level, idx, hash) FROM STDIN") as copy:
                            for node in nodes:
                                copy.write_row(node)
            except self._psycopg.errors.UniqueViolation:
                raise YumenError(
                    Code.ALREADY_EXISTS, "another writer appended at the same index", hint="reload and retry"
                ) from None

    def leaves(self, start: int, end: int) -> list[bytes]:
        rows = self._reader().execute(
            f"SELECT idx, leaf FROM {self._entries} WHERE idx >= %s AND idx < %s ORDER BY idx", (start, end)
        ).fetchall()
        if len(rows) != max(0, end - start) or (rows and (rows[0][0] != start or rows[-1][0] != end - 1)):
            raise YumenError(
                Code.NOT_FOUND,
                f"the log has no entries {start}..{end - 1} (found {len(rows)})",
                hint="ask for a range below the log size",
            )
        return [bytes(r[1]) for r in rows]

    def nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        rows = self._reader().execute(
            f"SELECT n.level, n.idx, n.hash FROM unnest(%s::smallint[], %s::bigint[]) AS k(level, idx) "
            f"JOIN {self._nodes} n ON n.level = k.level AND n.idx = k.idx",
            ([k[0] for k in wanted], [k[1] for k in wanted]),
        ).fetchall()
        found = {(int(level), int(idx)): bytes(h) for level, idx, h in rows}
        if len(found) != len(wanted):
            missing = [k for k in wanted if k not in found][:3]
            _log.error("log storage %s is missing tree nodes %s", self._schema, missing)
            raise YumenError(Code.INTERNAL, f"the log storage is missing tree nodes {missing}")
        return found

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def __repr__(self) -> str:
        return f"PostgresLogStorage(schema={self._schema!r})"
