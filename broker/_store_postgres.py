"""The broker's ``Store`` on PostgreSQL, for several broker replicas sharing one state.

Same tables and the same semantics as :class:`~yumen.broker._store.SqliteStore` (the
contract suite ``tests/unit/broker/test_store_contract.py`` runs against both), in a
schema of the caller's choice. ε values are exact fractions kept as ``"n/d"`` text; JSON
is kept as the exact text that was written (digests are taken over it); blobs are
``BYTEA``; text keys use the ``"C"`` collation so ordering matches SQLite's byte order.

Concurrency. Transactions run at READ COMMITTED and take row locks in one global order:

1. ``create_job`` first inserts the job row with ``ON CONFLICT (job_id) DO NOTHING``. A
   second replica inserting the same id waits on the unique index until the first commits
   or rolls back, so the idempotency check needs no separate lock.
2. Budget rows are then locked with ``SELECT ... FOR UPDATE``, one key after another in
   sorted order of ``(license, dataset, period)``; a missing row is first inserted with
   ``ON CONFLICT DO NOTHING`` so that there is a row to lock. Every account a reservation
   charges (the license's, and its namespace's period and lifetime accounts, see
   ``_budget``) is locked before any check, so every reservation on an account is
   serialized, across processes and hosts. A refusal raises inside the
   transaction, which rolls back the job row, any placeholder budget rows and everything
   else: nothing is written.
3. ``release_reservation`` locks the job's unreleased reservation rows, then the accounts
   they charged in the same sorted order, and subtracts exactly what each charged; a
   second release finds no unreleased rows.

Rejected alternatives: SERIALIZABLE would be correct too, but a hundred requests on one
budget key make it abort and retry most of them (a retry storm exactly when the budget is
contended); row locks form a queue instead. Transaction-level advisory locks on a hash of
the key also serialize, but a hash collision couples unrelated keys and the lock guards
nothing a plain ``UPDATE budget`` from another code path would respect. Because the lock
order is global, deadlocks should not happen; if PostgreSQL still reports one (or a
serialization failure, e.g. under a stricter default isolation), the whole transaction
is retried a few times, which is safe because it rolled back entirely.

Connections come from a small built-in pool (``max_connections`` per store, autocommit
with explicit transactions), not one per thread: a broker serving a hundred threads must
not open a hundred server connections. A connection that fails is closed together with
every idle one (typically the server restarted) and the caller gets ``UNAVAILABLE``.
Locks wait at most ``lock_timeout`` (30 s, like SQLite's busy timeout). Commits must be
durable: the store refuses to run with ``synchronous_commit`` off, since a lost
reservation after a crash would let a license spend its budget twice.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError
from yumen.jobs import JobState

from yumen.policy import Account, Charge, Reservation, refusal
from ._store import EventRecord, JobRecord, Store, TicketState, _frac_text, _start_refusal, now_ms

__all__ = ["PostgresStore"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# pg_advisory_xact_lock key held while creating the tables, so replicas starting together
# do not race on CREATE TABLE IF NOT EXISTS (which is not atomic against itself).
_DDL_LOCK_KEY = 0x59554D454E535431  # "YUMENST1"
# The advisory lock of the transparency log's writers in this database (see
# yumen.audit.PostgresLogStorage); atomic() takes it so ledger changes and their log
# entries are serialized together.
LOG_LOCK_KEY = 0x59554D454E4C4F47  # "YUMENLOG"
_RETRIES = 5
_DURABLE = ("on", "local", "remote_write", "remote_apply")
_RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)

_K = 'TEXT COLLATE "C" NOT NULL'  # a text key, ordered bytewise as in SQLite
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {{s}}.datasets (
    id {_K} PRIMARY KEY,
    connector TEXT NOT NULL,
    registration TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS {{s}}.jobs (
    job_id {_K} PRIMARY KEY,
    operator TEXT NOT NULL,
    license TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    request TEXT NOT NULL,
    algorithm_source BYTEA NOT NULL,
    he_context BYTEA NOT NULL DEFAULT '\\x',
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    decision TEXT NOT NULL,
    result TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON {{s}}.jobs(state);
CREATE TABLE IF NOT EXISTS {{s}}.job_events (
    job_id {_K},
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS {{s}}.budget (
    license {_K},      -- '*' for an account of all licenses together (see _budget)
    dataset {_K},      -- a dataset id, or 'ns:…' for a privacy-unit namespace
    period {_K},
    spent TEXT NOT NULL,
    runs BIGINT NOT NULL,
    PRIMARY KEY (license, dataset, period)
);
CREATE TABLE IF NOT EXISTS {{s}}.reservations (
    job_id {_K},
    dataset {_K},
    license TEXT NOT NULL,
    period TEXT NOT NULL,
    epsilon TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    released BOOLEAN NOT NULL DEFAULT FALSE,  -- given back because no data was touched
    charges TEXT NOT NULL DEFAULT '[]',       -- exactly what it added to each account
    PRIMARY KEY (job_id, dataset)
);
ALTER TABLE {{s}}.reservations ADD COLUMN IF NOT EXISTS charges TEXT NOT NULL DEFAULT '[]';
ALTER TABLE {{s}}.reservations ADD COLUMN IF NOT EXISTS expires_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE {{s}}.reservations ADD COLUMN IF NOT EXISTS started_ms BIGINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS {{s}}.licenses (
    id {_K} PRIMARY KEY,
    record TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS {{s}}.policy_versions (
    version {_K} PRIMARY KEY,
    bundle TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS {{s}}.revoked_certificates (
    fingerprint {_K} PRIMARY KEY,
    name TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS {{s}}.settings (
    key {_K} PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {{s}}.partials (
    job_id {_K},
    dataset {_K},
    receipt TEXT NOT NULL,
    ciphertext BYTEA NOT NULL DEFAULT '\\x',
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (job_id, dataset)
);
"""

_JOB_COLS = (
    "job_id, operator, license, request_digest, request, algorithm_source, state, message, "
    "decision, result, created_ms, updated_ms, he_context"
)
_REVOKED_COLS = ("fingerprint", "name", "reason", "revoked_by", "at_ms")

_BudgetKey = tuple[str, str, str]  # (license or "*", dataset, period)


def _row_to_job(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(
        job_id=row[0], operator=row[1], license=row[2], request_digest=row[3],
        request=json.loads(row[4]), algorithm_source=bytes(row[5]), state=JobState(row[6]),
        message=row[7], decision=json.loads(row[8]),
        result=json.loads(row[9]) if row[9] else None, created_ms=int(row[10]), updated_ms=int(row[11]),
        he_context=bytes(row[12]),
    )


class _LockedBudget:
    """Budget rows locked ``FOR UPDATE`` in one transaction, changed in memory, written back.

    Keys are locked in sorted order (the global lock order, see the module docstring).
    """

    def __init__(self, conn: Any, table: str) -> None:
        self._conn = conn
        self._table = table
        self._rows: dict[_BudgetKey, tuple[Fraction, int]] = {}
        self._dirty: set[_BudgetKey] = set()

    def lock(self, keys: set[_BudgetKey], *, create: bool) -> None:
        """Lock ``keys``; with ``create`` a missing row is first inserted as zero."""
        for key in sorted(keys):
            if create:
                self._conn.execute(
                    f"INSERT INTO {self._table}(license, dataset, period, spent, runs) VALUES (%s,%s,%s,'0/1',0) "
                    "ON CONFLICT (license, dataset, period) DO NOTHING",
                    key,
                )
            row = self._conn.execute(
                f"SELECT spent, runs FROM {self._table} WHERE license=%s AND dataset=%s AND period=%s FOR UPDATE", key
            ).fetchone()
            if row is not None:
                self._rows[key] = (Fraction(row[0]), int(row[1]))

    def exists(self, key: _BudgetKey) -> bool:
        return key in self._rows

    def get(self, key: _BudgetKey) -> tuple[Fraction, int]:
        if key not in self._rows:
            raise YumenError(Code.INTERNAL, f"budget row {key} was read without being locked")
        return self._rows[key]

    def add(self, key: _BudgetKey, eps: Fraction, runs: int) -> None:
        spent, n = self.get(key)
        self._rows[key] = (spent + eps, n + runs)
        self._dirty.add(key)

    def write(self) -> None:
        for key in sorted(self._dirty):
            spent, n = self._rows[key]
            self._conn.execute(
                f"UPDATE {self._table} SET spent=%s, runs=%s WHERE license=%s AND dataset=%s AND period=%s",
                (_frac_text(spent), n, *key),
            )
        self._dirty.clear()


class PostgresStore(Store):
    """The broker's state in PostgreSQL (``psycopg`` 3); see the module docstring."""

    def __init__(self, dsn: str, *, schema: str = "public", max_connections: int = 8,
                 lock_timeout_s: float = 30.0) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise YumenError(Code.CONFIG, f"schema name {schema!r} is not a plain lowercase identifier",
                             hint="use lowercase letters, digits and underscores")
        if max_connections < 1:
            raise YumenError(Code.CONFIG, f"max_connections must be at least 1, got {max_connections}")
        self._dsn = dsn
        self._schema = schema
        self._lock_timeout_ms = int(lock_timeout_s * 1000)
        self._max = max_connections
        self._idle: list[Any] = []
        self._open = 0
        self._cond = threading.Condition()
        self._closed = False
        self._local = threading.local()
        s = f'"{schema}"'
        self._t = {name: f"{s}.{name}" for name in (
            "datasets", "jobs", "job_events", "budget", "reservations", "licenses", "policy_versions",
            "revoked_certificates", "settings", "partials")}
        with self._connection() as conn:
            (sync,) = conn.execute("SHOW synchronous_commit").fetchone()
            if sync not in _DURABLE:
                raise YumenError(
                    Code.CONFIG,
                    f"PostgreSQL synchronous_commit is {sync!r}; the broker state needs durable commits",
                    hint="set synchronous_commit = on for the broker's database or role",
                )
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK_KEY,))
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                for stmt in _SCHEMA.replace("{s}", s).split(";"):
                    if stmt.strip():
                        conn.execute(stmt)

    # -- connections -------------------------------------------------------------------
    def _connect(self) -> Any:
        try:
            conn = psycopg.connect(self._dsn, autocommit=True)
        except psycopg.Error as e:
            raise YumenError(
                Code.UNAVAILABLE, f"cannot reach the broker's state database: {e.__class__.__name__}",
                hint="check the PostgreSQL DSN and that the server is running",
            ) from None
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{self._lock_timeout_ms}ms",))
        except BaseException:
            conn.close()
            raise
        return conn

    def _take(self) -> Any:
        with self._cond:
            deadline = time.monotonic() + self._lock_timeout_ms / 1000
            while True:
                if self._closed:
                    raise YumenError(Code.INTERNAL, "the broker state store is closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self._max:
                    self._open += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise YumenError(Code.UNAVAILABLE, "all connections to the broker's state database are busy",
                                     hint="retry, or raise the store's max_connections")
                self._cond.wait(left)
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _give_back(self, conn: Any, *, healthy: bool) -> None:
        reuse = healthy and not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
        drop = [] if reuse else [conn]
        with self._cond:
            if reuse and not self._closed:
                self._idle.append(conn)
            elif reuse:
                drop.append(conn)
            if not healthy:  # likely a server restart: the idle ones are dead too
                drop.extend(self._idle)
                self._idle.clear()
            self._open -= len(drop)
            self._cond.notify_all()
        for c in drop:
            try:
                c.close()
            except Exception:  # closing a dead connection can only fail harmlessly
                pass

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        held = getattr(self._local, "conn", None)
        if held is not None:  # inside atomic(): its transaction, its error handling
            yield held
            return
        conn = self._take()
        try:
            yield conn
        except _RETRYABLE:
            self._give_back(conn, healthy=True)  # rolled back; the caller retries
            raise
        except psycopg.errors.LockNotAvailable:
            self._give_back(conn, healthy=True)
            raise YumenError(Code.UNAVAILABLE, "the broker state is busy (a lock wait timed out)",
                             hint="retry in a moment") from None
        except psycopg.OperationalError as e:
            lost = conn.closed or conn.broken
            self._give_back(conn, healthy=not lost)
            _log.warning("broker state operation failed: %s (connection lost: %s)", e.__class__.__name__, lost)
            what = "lost the connection to" if lost else "an operation failed on"
            raise YumenError(Code.UNAVAILABLE, f"{what} the broker's state database: {e.__class__.__name__}",
                             hint="retry; check the PostgreSQL server") from None
        except BaseException:
            self._give_back(conn, healthy=True)
            raise
        else:
            self._give_back(conn, healthy=True)

    @contextmanager
    def atomic(self) -> Iterator[Any]:
        """One transaction for everything this thread writes inside the block.

        It first takes the log's transaction-level advisory lock (the one every append to the
        ``log_*`` tables of this schema takes), so these blocks are serialized across replicas,
        and the broker appends log entries on the yielded connection: a ledger change and the
        entry that records it commit together, in the order the ledger saw them. The store's
        own writes join the transaction as savepoints (psycopg nests ``transaction()``).
        Lock order: this advisory lock first, then rows, as everywhere else.
        """
        if getattr(self._local, "conn", None) is not None:
            raise YumenError(Code.INTERNAL, "atomic store blocks do not nest")
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK_KEY,))
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    def _write(self, fn: Callable[[Any], _T]) -> _T:
        """Run ``fn(conn)`` in one transaction; retry it whole on a deadlock or serialization failure."""
        for attempt in range(_RETRIES):
            try:
                with self._connection() as conn, conn.transaction():
                    return fn(conn)
            except _RETRYABLE as e:
                _log.info("broker state transaction retried after %s", e.__class__.__name__)
                time.sleep(0.005 * (2**attempt))
        raise YumenError(Code.UNAVAILABLE, "the broker state is too contended to commit",
                         hint="retry in a moment")

    def _rows(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _row(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        """Close every pooled connection; later calls raise."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.close()

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self._schema!r})"

    # -- catalog -------------------------------------------------------------
    def put_dataset(self, reg: DatasetRegistration, connector: str) -> None:
        self._write(lambda c: c.execute(
            f"INSERT INTO {self._t['datasets']}(id, connector, registration, updated_ms) VALUES (%s,%s,%s,%s) "
            "ON CONFLICT (id) DO UPDATE SET connector=excluded.connector, "
            "registration=excluded.registration, updated_ms=excluded.updated_ms",
            (reg.id, connector, json.dumps(reg.to_dict()), now_ms()),
        ))

    def list_datasets(self) -> list[tuple[DatasetRegistration, str]]:
        rows = self._rows(f"SELECT registration, connector FROM {self._t['datasets']} ORDER BY id")
        return [(DatasetRegistration.from_dict(json.loads(r)), c) for r, c in rows]

    def get_dataset(self, dataset_id: str) -> tuple[DatasetRegistration, str] | None:
        row = self._row(f"SELECT registration, connector FROM {self._t['datasets']} WHERE id=%s", (dataset_id,))
        return (DatasetRegistration.from_dict(json.loads(row[0])), row[1]) if row else None

    # -- jobs ----------------------------------------------------------------
    def create_job(self, job: JobRecord, reservations: list[Reservation]) -> tuple[JobRecord, bool]:
        """Insert ``job`` and reserve its budget atomically.

        Returns ``(job, True)`` when created, ``(existing, False)`` when the same operator
        already submitted the same request under this id (idempotent retry). Raises
        ``BUDGET_EXHAUSTED`` (nothing written) when a reservation would pass its cap.
        """

        def tx(conn: Any) -> tuple[JobRecord, bool]:
            inserted = conn.execute(
                f"INSERT INTO {self._t['jobs']}({_JOB_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
                (
                    job.job_id, job.operator, job.license, job.request_digest, json.dumps(job.request),
                    job.algorithm_source, job.state.value, job.message, json.dumps(job.decision),
                    json.dumps(job.result) if job.result else None, job.created_ms, job.updated_ms,
                    job.he_context,
                ),
            ).fetchone()
            if inserted is None:
                row = conn.execute(f"SELECT {_JOB_COLS} FROM {self._t['jobs']} WHERE job_id=%s", (job.job_id,)).fetchone()
                if row is None:  # the conflicting row vanished: jobs are never deleted
                    raise YumenError(Code.INTERNAL, f"job {job.job_id!r} conflicted but cannot be read")
                existing = _row_to_job(row)
                if existing.operator == job.operator and existing.request_digest == job.request_digest:
                    return existing, False
                raise YumenError(
                    Code.ALREADY_EXISTS,
                    f"job id {job.job_id!r} is already taken by a different job",
                    hint="choose a new job id, or omit it to have one generated",
                )
            budget = _LockedBudget(conn, self._t["budget"])
            budget.lock({limit.account for r in reservations for limit in r.limits}, create=True)
            for r in reservations:
                self._reserve(conn, budget, job.job_id, r, job.created_ms)
            budget.write()
            conn.execute(
                f"INSERT INTO {self._t['job_events']}(job_id, seq, state, message, at_ms) VALUES (%s,%s,%s,%s,%s)",
                (job.job_id, 1, job.state.value, job.message, job.created_ms),
            )
            return job, True

        return self._write(tx)

    def _reserve(self, conn: Any, budget: _LockedBudget, job_id: str, r: Reservation, at_ms: int) -> None:
        # The same checks, in the same order, as SqliteStore._reserve (both from _budget).
        for limit in r.limits:
            spent, runs = budget.get(limit.account)
            err = refusal(r, limit, spent, runs)
            if err is not None:
                raise err
        charges = r.charges()
        for c in charges:
            budget.add(c.account, c.amount, c.runs)
        conn.execute(
            f"INSERT INTO {self._t['reservations']}(job_id, dataset, license, period, epsilon, at_ms, charges) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s)",
            (job_id, r.dataset, r.license, r.period, _frac_text(r.epsilon), at_ms,
             json.dumps([c.to_list() for c in charges])),
        )

    def release_reservation(self, job_id: str, *, dataset: str = "",
                            keep_started: bool = False) -> list[tuple[str, tuple[Charge, ...]]]:
        """Give back a job's budget (one dataset's, or all of it), exactly as it was charged. Only
        where the data was never touched: a job cancelled before dispatch, a dataset whose
        department refused, or (``keep_started``) every dataset of a cancelled or expired job
        that no department was let start."""

        def tx(conn: Any) -> list[tuple[str, tuple[Charge, ...]]]:
            rows = conn.execute(
                f"SELECT dataset, charges FROM {self._t['reservations']} "
                "WHERE job_id=%s AND NOT released AND (%s = '' OR dataset = %s) AND (NOT %s OR started_ms = 0) "
                "ORDER BY dataset FOR UPDATE",
                (job_id, dataset, dataset, keep_started),
            ).fetchall()
            parsed = [(ds, tuple(Charge.from_list(c) for c in json.loads(text))) for ds, text in rows]
            budget = _LockedBudget(conn, self._t["budget"])
            budget.lock({c.account for _, charges in parsed for c in charges}, create=True)
            for ds, charges in parsed:
                for c in charges:
                    budget.add(c.account, -c.amount, -c.runs)
                conn.execute(
                    f"UPDATE {self._t['reservations']} SET released=TRUE WHERE job_id=%s AND dataset=%s", (job_id, ds)
                )
            budget.write()
            return parsed

        return self._write(tx)

    def ticket_expiry(self, job_id: str, dataset: str, proposed_ms: int) -> int:
        """See :meth:`yumen.broker._store.SqliteStore.ticket_expiry`."""

        def tx(conn: Any) -> int:
            conn.execute(f"UPDATE {self._t['reservations']} SET expires_ms=%s "
                         "WHERE job_id=%s AND dataset=%s AND expires_ms=0", (proposed_ms, job_id, dataset))
            row = conn.execute(f"SELECT expires_ms FROM {self._t['reservations']} WHERE job_id=%s AND dataset=%s",
                               (job_id, dataset)).fetchone()
            return int(row[0]) if row else proposed_ms

        return self._write(tx)

    def start_ticket(self, job_id: str, dataset: str, at_ms: int) -> str:
        """See :meth:`yumen.broker._store.SqliteStore.start_ticket`; the job's row is locked, as
        a cancellation's state change locks it, so the two queue behind each other."""

        def tx(conn: Any) -> str:
            job = conn.execute(f"SELECT state FROM {self._t['jobs']} WHERE job_id=%s FOR UPDATE", (job_id,)).fetchone()
            res = conn.execute(f"SELECT released, expires_ms, started_ms FROM {self._t['reservations']} "
                               "WHERE job_id=%s AND dataset=%s FOR UPDATE", (job_id, dataset)).fetchone()
            why = _start_refusal(job[0] if job else None,
                                 (int(res[0]), int(res[1]), int(res[2])) if res else None, at_ms)
            if not why:
                conn.execute(f"UPDATE {self._t['reservations']} SET started_ms=%s "
                             "WHERE job_id=%s AND dataset=%s AND started_ms=0", (at_ms, job_id, dataset))
            return why

        return self._write(tx)

    def ticket_states(self, job_id: str) -> dict[str, TicketState]:
        rows = self._rows(f"SELECT dataset, expires_ms, started_ms, released FROM {self._t['reservations']} "
                          "WHERE job_id=%s", (job_id,))
        return {ds: TicketState(expires_ms=int(e), started_ms=int(st), released=bool(r)) for ds, e, st, r in rows}

    # -- certificate revocation --------------------------------------------------------
    def revoke_certificate(self, fingerprint: str, *, name: str, reason: str, by: str) -> dict[str, Any]:
        self._write(lambda c: c.execute(
            f"INSERT INTO {self._t['revoked_certificates']}(fingerprint, name, reason, revoked_by, at_ms) "
            "VALUES (%s,%s,%s,%s,%s) ON CONFLICT (fingerprint) DO NOTHING",
            (fingerprint, name, reason, by, now_ms()),
        ))
        return self.revoked(fingerprint) or {}

    def revoked(self, fingerprint: str) -> dict[str, Any] | None:
        row = self._row(
            f"SELECT {', '.join(_REVOKED_COLS)} FROM {self._t['revoked_certificates']} WHERE fingerprint=%s",
            (fingerprint,),
        )
        return dict(zip(_REVOKED_COLS, row)) if row else None

    def list_revoked(self) -> list[dict[str, Any]]:
        rows = self._rows(
            f"SELECT {', '.join(_REVOKED_COLS)} FROM {self._t['revoked_certificates']} ORDER BY at_ms, fingerprint"
        )
        return [dict(zip(_REVOKED_COLS, r)) for r in rows]

    # -- licenses and policy versions ---------------------------------------------
    def put_license(self, record: dict[str, Any]) -> None:
        self._write(lambda c: c.execute(
            f"INSERT INTO {self._t['licenses']}(id, record, updated_ms) VALUES (%s,%s,%s) "
            "ON CONFLICT (id) DO UPDATE SET record=excluded.record, updated_ms=excluded.updated_ms",
            (record["id"], json.dumps(record, sort_keys=True), now_ms()),
        ))

    def get_license(self, license_id: str) -> dict[str, Any] | None:
        row = self._row(f"SELECT record FROM {self._t['licenses']} WHERE id=%s", (license_id,))
        return json.loads(row[0]) if row else None

    def list_licenses(self) -> list[dict[str, Any]]:
        return [json.loads(r) for (r,) in self._rows(f"SELECT record FROM {self._t['licenses']} ORDER BY id")]

    def put_policy_version(self, version: str, bundle: dict[str, str], *, current: bool) -> None:
        def tx(conn: Any) -> None:
            conn.execute(
                f"INSERT INTO {self._t['policy_versions']}(version, bundle, created_ms) VALUES (%s,%s,%s) "
                "ON CONFLICT (version) DO NOTHING",
                (version, json.dumps(bundle, sort_keys=True), now_ms()),
            )
            if current:
                conn.execute(
                    f"INSERT INTO {self._t['settings']}(key, value) VALUES ('policy_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value=excluded.value", (version,),
                )

        self._write(tx)

    def policy_version(self, version: str) -> dict[str, str] | None:
        row = self._row(f"SELECT bundle FROM {self._t['policy_versions']} WHERE version=%s", (version,))
        return json.loads(row[0]) if row else None

    def current_policy_version(self) -> str:
        row = self._row(f"SELECT value FROM {self._t['settings']} WHERE key='policy_version'")
        return row[0] if row else ""

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._row(f"SELECT {_JOB_COLS} FROM {self._t['jobs']} WHERE job_id=%s", (job_id,))
        return _row_to_job(row) if row else None

    def jobs_in_state(self, *states: JobState) -> list[JobRecord]:
        rows = self._rows(
            f"SELECT {_JOB_COLS} FROM {self._t['jobs']} WHERE state = ANY(%s) ORDER BY created_ms, job_id",
            ([s.value for s in states],),
        )
        return [_row_to_job(r) for r in rows]

    def count_jobs(self, license: str, *states: JobState) -> int:
        """How many jobs of ``license`` are in one of ``states`` (the queued-jobs limit)."""
        row = self._row(f"SELECT COUNT(*) FROM {self._t['jobs']} WHERE license=%s AND state = ANY(%s)",
                        (license, [s.value for s in states]))
        return int(row[0]) if row else 0

    def set_state(
        self, job_id: str, state: JobState, message: str, *, result: dict[str, Any] | None = None,
        expect: JobState | None = None,
    ) -> EventRecord | None:
        """Move a job to ``state`` and record the event; a final job never moves.

        With ``expect``, the move happens only if the job is in that state now (compare and
        set, atomic across broker replicas); otherwise nothing changes and None is returned.
        """
        at = now_ms()

        def tx(conn: Any) -> EventRecord | None:
            # FOR UPDATE: replicas moving the same job queue here, so the final-state check
            # and the next event number are decided by one of them at a time.
            row = conn.execute(f"SELECT state FROM {self._t['jobs']} WHERE job_id=%s FOR UPDATE", (job_id,)).fetchone()
            if row is None:
                raise YumenError(Code.NOT_FOUND, f"no job {job_id!r}")
            if expect is not None and JobState(row[0]) is not expect:
                return None
            if JobState(row[0]).final:
                raise YumenError(Code.INTERNAL, f"job {job_id} is already {row[0]}; cannot move it to {state.value}")
            conn.execute(
                f"UPDATE {self._t['jobs']} SET state=%s, message=%s, updated_ms=%s, result=COALESCE(%s::text, result) "
                "WHERE job_id=%s",
                (state.value, message, at, json.dumps(result) if result is not None else None, job_id),
            )
            (seq,) = conn.execute(
                f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {self._t['job_events']} WHERE job_id=%s", (job_id,)
            ).fetchone()
            conn.execute(
                f"INSERT INTO {self._t['job_events']}(job_id, seq, state, message, at_ms) VALUES (%s,%s,%s,%s,%s)",
                (job_id, seq, state.value, message, at),
            )
            return EventRecord(job_id=job_id, seq=int(seq), state=state, message=message, at_ms=at)

        return self._write(tx)

    def events(self, job_id: str, after_seq: int = 0) -> list[EventRecord]:
        rows = self._rows(
            f"SELECT seq, state, message, at_ms FROM {self._t['job_events']} WHERE job_id=%s AND seq>%s ORDER BY seq",
            (job_id, after_seq),
        )
        return [EventRecord(job_id=job_id, seq=int(s), state=JobState(st), message=m, at_ms=int(a)) for s, st, m, a in rows]

    def put_partial(self, job_id: str, dataset: str, receipt: dict[str, Any], ciphertext: bytes = b"") -> bool:
        """Store a connector's receipt (and ciphertext) once; a duplicate delivery returns False."""
        return self._write(lambda c: c.execute(
            f"INSERT INTO {self._t['partials']}(job_id, dataset, receipt, ciphertext, at_ms) VALUES (%s,%s,%s,%s,%s) "
            "ON CONFLICT (job_id, dataset) DO NOTHING",
            (job_id, dataset, json.dumps(receipt), bytes(ciphertext), now_ms()),
        ).rowcount == 1)

    def partials(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Receipts by dataset; each dict has ``payload``, ``signature`` and ``ciphertext`` (bytes)."""
        rows = self._rows(f"SELECT dataset, receipt, ciphertext FROM {self._t['partials']} WHERE job_id=%s", (job_id,))
        return {d: {**json.loads(r), "ciphertext": bytes(c)} for d, r, c in rows}

    def _budget_row(self, license: str, dataset: str, period: str) -> tuple[Fraction, int]:
        row = self._row(
            f"SELECT spent, runs FROM {self._t['budget']} WHERE license=%s AND dataset=%s AND period=%s",
            (license, dataset, period),
        )
        return (Fraction(row[0]), int(row[1])) if row else (Fraction(0), 0)

    def spent(self, license: str, dataset: str, period: str = "total") -> Fraction:
        """What the account (``license`` or ``"*"``, dataset or ``ns:…``, window) has spent."""
        return self._budget_row(license, dataset, period)[0]

    def balance(self, account: Account) -> tuple[Fraction, int]:
        """An account's spent amount and run count (zero when it was never charged)."""
        return self._budget_row(*account)

    def ledger(self) -> list[tuple[str, str, str, Fraction, int]]:
        """Every budget row: (license or "*", dataset, period, ε spent, runs)."""
        rows = self._rows(f"SELECT license, dataset, period, spent, runs FROM {self._t['budget']} ORDER BY 1, 2, 3")
        return [(lic, ds, period, Fraction(spent), int(runs)) for lic, ds, period, spent, runs in rows]

    def runs(self, license: str, dataset: str, period: str = "total") -> int:
        return self._budget_row(license, dataset, period)[1]

    def iter_reservations(self) -> Iterator[tuple[str, str, str, str, Fraction, bool, tuple[Charge, ...]]]:
        """Every reservation: (job, dataset, license, period, ε asked, released, charges)."""
        # Read whole, then yield: a pooled connection is not held across the caller's loop.
        rows = self._rows(
            f"SELECT job_id, dataset, license, period, epsilon, released, charges FROM {self._t['reservations']} "
            "ORDER BY at_ms, job_id, dataset"
        )
        for job_id, dataset, lic, period, eps, released, charges in rows:
            yield (job_id, dataset, lic, period, Fraction(eps), bool(released),
                   tuple(Charge.from_list(c) for c in json.loads(charges)))
