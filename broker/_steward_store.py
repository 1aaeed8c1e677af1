"""The broker's stewardship state: quality reports, verification offers, feedback, caps.

Kept in its own tables (``steward_*``) beside the broker's store, in the same SQLite file or
the same PostgreSQL schema, so replicas share it. One implementation serves both databases:
the statements are the common subset (``ON CONFLICT`` upserts), only the parameter marker
and the connection differ. The contract tests run against both.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from yumen.errors import Code, YumenError

if TYPE_CHECKING:
    from yumen.broker._store import Store

__all__ = ["StewardStore", "SqliteStewardStore", "PostgresStewardStore"]

_TABLES = """
CREATE TABLE IF NOT EXISTS {p}steward_quality (
    dataset TEXT NOT NULL, version TEXT NOT NULL, report TEXT NOT NULL, signature TEXT NOT NULL,
    digest TEXT NOT NULL, connector TEXT NOT NULL, received_ms BIGINT NOT NULL, certificate TEXT NOT NULL,
    PRIMARY KEY (dataset, version));
CREATE TABLE IF NOT EXISTS {p}steward_offers (
    dataset TEXT PRIMARY KEY, offer TEXT NOT NULL, signature TEXT NOT NULL, certificate TEXT NOT NULL,
    connector TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {p}steward_feedback (
    id TEXT PRIMARY KEY, dataset TEXT NOT NULL, payload TEXT NOT NULL, connector TEXT NOT NULL,
    delivered INTEGER NOT NULL, at_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS {p}steward_counts (
    win TEXT NOT NULL, cap_key TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (win, cap_key));
CREATE TABLE IF NOT EXISTS {p}steward_answers (
    request_id TEXT NOT NULL, operator TEXT NOT NULL, answer TEXT NOT NULL, PRIMARY KEY (operator, request_id));
CREATE TABLE IF NOT EXISTS {p}steward_destroyed (
    dataset TEXT NOT NULL, version TEXT NOT NULL, PRIMARY KEY (dataset, version));
CREATE TABLE IF NOT EXISTS {p}steward_certificates (
    fingerprint TEXT PRIMARY KEY, connector TEXT NOT NULL, at_ms BIGINT NOT NULL)
"""


class StewardStore(Protocol):
    def put_quality(self, dataset: str, version: str, report: str, signature: str, digest: str, connector: str,
                    certificate: str = "") -> bool: ...
    def quality_versions(self, dataset: str) -> int: ...
    def quality(self, dataset: str, version: str = "") -> dict[str, Any] | None: ...
    def put_offer(self, dataset: str, offer: str, signature: str, certificate: str, connector: str) -> None: ...
    def offer(self, dataset: str) -> dict[str, Any] | None: ...
    def add_feedback(self, dataset: str, payload: str, connector: str) -> tuple[str, int]: ...
    def undelivered_feedback(self, connector: str) -> list[tuple[str, str]]: ...
    def mark_delivered(self, feedback_id: str) -> None: ...
    def feedback_count(self, dataset: str) -> int: ...
    def take(self, window: str, key: str, limit: int) -> bool: ...
    def put_answer(self, operator: str, request_id: str, answer: str) -> None: ...
    def answer(self, operator: str, request_id: str) -> str | None: ...
    def mark_destroyed(self, dataset: str, version: str) -> bool: ...
    def certificate_logged(self, fingerprint: str) -> bool: ...
    def mark_certificate_logged(self, fingerprint: str, connector: str) -> None: ...


class _SqlStewardStore:
    """The statements of :class:`StewardStore` over a DB-API connection factory."""

    _mark = "?"

    def __init__(self, prefix: str) -> None:
        self._p = prefix

    def _conn(self, write: bool = True) -> Any:  # a context manager yielding a connection in a transaction
        raise YumenError(Code.INTERNAL, "_SqlStewardStore._conn is not implemented")

    def _q(self, sql: str) -> str:
        return sql.replace("{p}", self._p).replace("?", self._mark)

    def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        # a read never waits for the write lock: the broker reads reports while a registration's
        # transaction (which holds it on SQLite) is open
        with self._conn(write=False) as db:
            return db.execute(self._q(sql), args).fetchone()

    def _run(self, sql: str, args: tuple[Any, ...]) -> int:
        with self._conn() as db:
            return db.execute(self._q(sql), args).rowcount

    def put_quality(self, dataset: str, version: str, report: str, signature: str, digest: str, connector: str,
                    certificate: str = "") -> bool:
        """Keep a version's report once; False when one was kept before (the first one stays).

        ``certificate`` is the PEM of the connector certificate that signed it."""
        return self._run("INSERT INTO {p}steward_quality(dataset, version, report, signature, digest, connector, received_ms, "
                         "certificate) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (dataset, version) DO NOTHING",
                         (dataset, version, report, signature, digest, connector, int(time.time() * 1000),
                          certificate)) == 1

    def quality_versions(self, dataset: str) -> int:
        """How many versions of ``dataset`` have a report here."""
        return int(self._one("SELECT COUNT(*) FROM {p}steward_quality WHERE dataset=?", (dataset,))[0])

    def quality(self, dataset: str, version: str = "") -> dict[str, Any] | None:
        if version:
            row = self._one("SELECT report, signature, digest, version, certificate FROM {p}steward_quality "
                            "WHERE dataset=? AND version=?", (dataset, version))
        else:
            row = self._one("SELECT report, signature, digest, version, certificate FROM {p}steward_quality "
                            "WHERE dataset=? ORDER BY received_ms DESC LIMIT 1", (dataset,))
        return ({"report": row[0], "signature": row[1], "digest": row[2], "version": row[3], "certificate": row[4]}
                if row else None)

    def put_offer(self, dataset: str, offer: str, signature: str, certificate: str, connector: str) -> None:
        self._run("INSERT INTO {p}steward_offers(dataset, offer, signature, certificate, connector) VALUES (?,?,?,?,?) "
                  "ON CONFLICT (dataset) DO UPDATE SET offer=excluded.offer, signature=excluded.signature, "
                  "certificate=excluded.certificate, connector=excluded.connector",
                  (dataset, offer, signature, certificate, connector))

    def offer(self, dataset: str) -> dict[str, Any] | None:
        row = self._one("SELECT offer, signature, certificate, connector FROM {p}steward_offers WHERE dataset=?", (dataset,))
        return {"offer": row[0], "signature": row[1], "certificate": row[2], "connector": row[3]} if row else None

    def add_feedback(self, dataset: str, payload: str, connector: str) -> tuple[str, int]:
        ident = "fb-" + uuid.uuid4().hex[:16]
        self._run("INSERT INTO {p}steward_feedback(id, dataset, payload, connector, delivered, at_ms) VALUES (?,?,?,?,0,?)",
                  (ident, dataset, payload.replace("{id}", ident), connector, int(time.time() * 1000)))
        return ident, self.feedback_count(dataset)

    def undelivered_feedback(self, connector: str) -> list[tuple[str, str]]:
        with self._conn(write=False) as db:
            rows = db.execute(self._q("SELECT id, payload FROM {p}steward_feedback WHERE connector=? AND delivered=0 "
                                      "ORDER BY at_ms"), (connector,)).fetchall()
        return [(r[0], r[1]) for r in rows]

    def mark_delivered(self, feedback_id: str) -> None:
        self._run("UPDATE {p}steward_feedback SET delivered=1 WHERE id=?", (feedback_id,))

    def feedback_count(self, dataset: str) -> int:
        """Quality problems operators flagged on ``dataset`` (for the dataset's disclosure)."""
        row = self._one("SELECT COUNT(*) FROM {p}steward_feedback WHERE dataset=?", (dataset,))
        return int(row[0])

    def take(self, window: str, key: str, limit: int) -> bool:
        """Count one use of ``key`` in ``window`` unless ``limit`` uses were counted already."""
        with self._conn() as db:
            db.execute(self._q("INSERT INTO {p}steward_counts(win, cap_key, n) VALUES (?,?,0) ON CONFLICT (win, cap_key) "
                               "DO NOTHING"), (window, key))
            cur = db.execute(self._q("UPDATE {p}steward_counts SET n = n + 1 WHERE win=? AND cap_key=? AND n < ?"),
                             (window, key, limit))
            return cur.rowcount == 1

    def put_answer(self, operator: str, request_id: str, answer: str) -> None:
        self._run("INSERT INTO {p}steward_answers(request_id, operator, answer) VALUES (?,?,?) "
                  "ON CONFLICT (operator, request_id) DO NOTHING", (request_id, operator, answer))

    def answer(self, operator: str, request_id: str) -> str | None:
        row = self._one("SELECT answer FROM {p}steward_answers WHERE operator=? AND request_id=?", (operator, request_id))
        return row[0] if row else None

    def mark_destroyed(self, dataset: str, version: str) -> bool:
        """Record an expired version's destruction once; False when it was recorded before."""
        return self._run("INSERT INTO {p}steward_destroyed(dataset, version) VALUES (?,?) ON CONFLICT (dataset, version) "
                         "DO NOTHING", (dataset, version)) == 1

    def certificate_logged(self, fingerprint: str) -> bool:
        """Whether the log carries this connector certificate already."""
        return self._one("SELECT 1 FROM {p}steward_certificates WHERE fingerprint=?", (fingerprint,)) is not None

    def mark_certificate_logged(self, fingerprint: str, connector: str) -> None:
        self._run("INSERT INTO {p}steward_certificates(fingerprint, connector, at_ms) VALUES (?,?,?) "
                  "ON CONFLICT (fingerprint) DO NOTHING", (fingerprint, connector, int(time.time() * 1000)))


class SqliteStewardStore(_SqlStewardStore):
    def __init__(self, path: Path) -> None:
        super().__init__("")
        self.path = Path(path)
        self._local = threading.local()
        self._db().executescript(self._q(_TABLES))

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def _conn(self, write: bool = True) -> Any:
        store = self

        class _Tx:
            def __enter__(self) -> sqlite3.Connection:
                db = store._db()
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
                self.db = db
                return db

            def __exit__(self, exc_type: Any, *_: Any) -> None:
                self.db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()


class PostgresStewardStore(_SqlStewardStore):
    _mark = "%s"

    def __init__(self, dsn: str, *, schema: str = "public") -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise YumenError(Code.CONFIG, f"schema name {schema!r} is not a plain lowercase identifier")
        super().__init__(f'"{schema}".')
        self._dsn = dsn
        with self._conn() as db:
            db.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            for stmt in self._q(_TABLES).split(";"):
                if stmt.strip():
                    db.execute(stmt)

    def _conn(self, write: bool = True) -> Any:
        import contextlib

        import psycopg

        @contextlib.contextmanager
        def tx() -> Iterator[Any]:
            try:
                conn = psycopg.connect(self._dsn)
            except psycopg.Error as e:
                raise YumenError(Code.UNAVAILABLE, f"cannot reach the broker's state database: {type(e).__name__}") from None
            try:
                with conn.transaction():
                    yield conn
            finally:
                conn.close()

        return tx()


def steward_store_for(store: Store, *, dsn: str = "", schema: str = "public") -> StewardStore:
    """The stewardship store beside the broker's ``store`` (same SQLite file, or same PostgreSQL schema)."""
    path: Callable[[], Any] | None = getattr(store, "path", None)
    if dsn:
        return PostgresStewardStore(dsn, schema=schema)
    if path is None:
        raise YumenError(Code.INTERNAL, "no stewardship store for this broker store")
    return SqliteStewardStore(store.path)
