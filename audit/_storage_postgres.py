"""The ``LogStorage`` contract on PostgreSQL, for several broker replicas sharing one log.

Same two tables as the SQLite store (``log_entries``, ``log_nodes``), in a schema of the
caller's choice. Writers serialise on a transaction-scoped advisory lock and then check
the expected start index, so two replicas never interleave a batch; the one that lost
gets ``ALREADY_EXISTS`` and its :class:`~yumen.audit.TransparencyLog` reloads and
retries. Commits are durable with PostgreSQL's default ``synchronous_commit=on``, which
the store refuses to run without. Bulk leaves and nodes go in with ``COPY``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
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
    """Leaves and subtree hashes in PostgreSQL (``psycopg`` 3, connections from ``psycopg_pool``).

    Every read and append borrows a connection from one pool of at most ``max_connections``
    (checked before use, so a server restart costs one failed call, not a dead pool), instead
    of keeping a connection per thread: a broker serving many threads must not hold a
    server connection for each of them.
    """

    def __init__(self, dsn: str, *, schema: str = "public", max_connections: int = 4) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError:  # pragma: no cover - both are project dependencies
            raise YumenError(Code.CONFIG, "PostgreSQL storage needs psycopg and psycopg_pool",
                             hint="pip install 'psycopg[binary]' psycopg-pool") from None
        if not _SCHEMA_NAME.match(schema):
            raise YumenError(Code.CONFIG, f"schema name {schema!r} is not a plain lowercase identifier")
        if max_connections < 1:
            raise YumenError(Code.CONFIG, f"max_connections must be at least 1, got {max_connections}")
        self._psycopg = psycopg
        self._schema = schema
        self._entries = f'"{schema}".log_entries'
        self._nodes = f'"{schema}".log_nodes'
        self._closed = False
        self._pool = ConnectionPool(
            dsn, min_size=1, max_size=max_connections, kwargs={"autocommit": True}, open=False,
            check=ConnectionPool.check_connection, timeout=30, name=f"yumen-log-{schema}",
        )
        try:
            self._pool.open(wait=True, timeout=30)
        except PoolTimeout:
            self._pool.close()
            raise YumenError(Code.UNAVAILABLE, "cannot reach the log database", hint="check the DSN and the server") from None
        with self._use() as conn, conn.transaction():
            (sync,) = conn.execute("SHOW synchronous_commit").fetchone()
            if sync not in ("on", "remote_write", "remote_apply"):
                self._pool.close()
                raise YumenError(
                    Code.CONFIG,
                    f"PostgreSQL synchronous_commit is {sync!r}; the log needs durable commits",
                    hint="set synchronous_commit = on for the log's database or role",
                )
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self._entries} (idx BIGINT PRIMARY KEY, leaf BYTEA NOT NULL)")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._nodes} (level SMALLINT NOT NULL, idx BIGINT NOT NULL, "
                "hash BYTEA NOT NULL, PRIMARY KEY (level, idx))"
            )

    @contextlib.contextmanager
    def _use(self) -> Iterator[Any]:
        """A pooled connection; database failures become ``UNAVAILABLE`` with the reason."""
        if self._closed:
            raise YumenError(Code.INTERNAL, "the log storage is closed")
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise YumenError(Code.UNAVAILABLE, "all connections to the log database are busy", hint="retry in a moment") from None
        except self._psycopg.OperationalError as e:
            _log.warning("log storage operation failed: %s", e.__class__.__name__)
            raise YumenError(Code.UNAVAILABLE, f"the log database failed: {e.__class__.__name__}",
                             hint="retry; check the PostgreSQL server") from None

    def _size(self, conn: Any) -> int:
        (n,) = conn.execute(f"SELECT COALESCE(MAX(idx) + 1, 0) FROM {self._entries}").fetchone()
        return int(n)

    def size(self) -> int:
        with self._use() as conn:
            return self._size(conn)

    def append(self, *, start: int, leaves: Sequence[bytes], nodes: Sequence[StoredNode]) -> None:
        _check_nodes(nodes)
        try:
            with self._use() as conn, conn.transaction():
                self.within(conn).append(start=start, leaves=leaves, nodes=nodes, expect=True)
        except self._psycopg.errors.UniqueViolation:
            raise YumenError(
                Code.ALREADY_EXISTS, "another writer appended at the same index", hint="reload and retry"
            ) from None

    def within(self, conn: Any) -> "_PostgresWithin":
        """This storage's appends on ``conn``, a connection to the same database inside an open
        transaction (see ``TransparencyLog.append_within``); takes the writers' advisory lock."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))  # re-entrant in one transaction
        return _PostgresWithin(self, conn)

    def leaves(self, start: int, end: int) -> list[bytes]:
        with self._use() as conn:
            rows = conn.execute(
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
        with self._use() as conn:
            return self._nodes_on(conn, keys)

    def _nodes_on(self, conn: Any, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        rows = conn.execute(
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
        self._pool.close()

    def __repr__(self) -> str:
        return f"PostgresLogStorage(schema={self._schema!r})"


def _check_nodes(nodes: Sequence[StoredNode]) -> None:
    for level, _idx, h in nodes:
        if len(h) != HASH_SIZE or level < 0:
            raise YumenError(Code.INTERNAL, f"refusing to store a malformed node at level {level}")


class _PostgresWithin:
    """Appends and the reads they need, on a connection inside the caller's transaction, which
    holds the writers' advisory lock."""

    def __init__(self, storage: PostgresLogStorage, conn: Any) -> None:
        self._storage = storage
        self._conn = conn

    def size(self) -> int:
        return self._storage._size(self._conn)

    def leaves(self, start: int, end: int) -> list[bytes]:
        """Leaves ``[start, end)`` as this transaction sees them (its own appends included)."""
        rows = self._conn.execute(
            f"SELECT leaf FROM {self._storage._entries} WHERE idx >= %s AND idx < %s ORDER BY idx", (start, end)
        ).fetchall()
        if len(rows) != max(0, end - start):
            raise YumenError(Code.INTERNAL, f"the log has no entries {start}..{end - 1} in this transaction")
        return [bytes(r[0]) for r in rows]

    def nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        return self._storage._nodes_on(self._conn, keys)

    def append(self, *, start: int, leaves: Sequence[bytes], nodes: Sequence[StoredNode], expect: bool = False) -> None:
        _check_nodes(nodes)
        if expect:
            have = self.size()
            if have != start:
                raise YumenError(
                    Code.ALREADY_EXISTS,
                    f"the log has {have} entries, the append expected {start}",
                    hint="another writer appended; reload and retry",
                )
        with self._conn.cursor() as cur:
            with cur.copy(f"COPY {self._storage._entries} (idx, leaf) FROM STDIN") as copy:
                for i, leaf in enumerate(leaves):
                    copy.write_row((start + i, bytes(leaf)))
            with cur.copy(f"COPY {self._storage._nodes} (level, idx, hash) FROM STDIN") as copy:
                for node in nodes:
                    copy.write_row(node)
