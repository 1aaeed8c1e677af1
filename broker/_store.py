"""Broker state: catalog, jobs, budget ledger and partial results.

``Store`` is the contract (an abstract class: what every method returns and guarantees under
concurrency); :class:`SqliteStore` is the embedded default (WAL, synchronous
FULL, a reader connection per thread, and every write on one writer connection whose
transactions are group-committed: see :mod:`yumen.groupcommit` and docs/broker-state.md).
Write blocks run one at a time, so budget reservations are serialized. Budgets are stored
as exact fractions ("n/d").

Job creation and budget reservation happen in one transaction: a job either exists with
its budget reserved, or neither happened. Job ids are idempotency keys.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError
from yumen.groupcommit import GroupCommit
from yumen.jobs import JobState

from yumen.policy import Account, Charge, Reservation, refusal

__all__ = ["Store", "SqliteStore", "JobRecord", "Reservation", "EventRecord", "TicketState", "now_ms"]  # Reservation: see _budget


def now_ms() -> int:
    return int(time.time() * 1000)


def _frac(text: str) -> Fraction:
    return Fraction(text)


def _frac_text(f: Fraction) -> str:
    return f"{f.numerator}/{f.denominator}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobRecord:
    job_id: str
    operator: str
    license: str
    request_digest: str
    request: dict[str, Any]
    algorithm_source: bytes
    state: JobState
    message: str
    decision: dict[str, Any]
    created_ms: int
    updated_ms: int
    result: dict[str, Any] | None = None
    he_context: bytes = b""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TicketState:
    """Where one dataset's ticket of a job stands (see :meth:`SqliteStore.start_ticket`)."""

    expires_ms: int  # 0: no ticket issued yet
    started_ms: int  # 0: the department was never let start it
    released: bool   # its budget was given back


def _start_refusal(state: str | None, reservation: tuple[int, int, int] | None, at_ms: int) -> str:
    """Why a dataset's ticket may not start now ("" when it may), from the job's state and the
    reservation's (released, expires_ms, started_ms). Shared by both stores."""
    if state is None or reservation is None:
        return "the broker holds no such job"
    released, expires_ms, started_ms = reservation
    if started_ms:
        return ""  # asked again (a retry): the answer stays the same
    if JobState(state).final:
        return f"the job is {state}"
    if released:
        return "the job's budget on this dataset was given back"
    if expires_ms and at_ms > expires_ms:
        return "the ticket expired before the department started it"
    return ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EventRecord:
    job_id: str
    seq: int
    state: JobState
    message: str
    at_ms: int


class Store(abc.ABC):
    """The broker's state: catalog, jobs and their events, the budget ledger, reservations and
    tickets, partial results, licenses, policy versions and revoked certificates.

    Two implementations keep the same contract (``tests/unit/broker/test_store_contract.py``
    runs against both): :class:`SqliteStore` (one broker) and
    :class:`~yumen.broker._store_postgres.PostgresStore` (several replicas on one database).
    Every method but :meth:`close` is abstract, so an implementation missing one fails when it
    is constructed.

    Rules every method follows unless its own docstring says more:

    * A write is one transaction: it happens whole or not at all, and a failed write (any
      exception) leaves nothing behind. Inside :meth:`atomic` (which the broker opens through
      ``Broker.recorded()``) the write joins that block's transaction as a savepoint instead,
      so it commits together with the log entries appended in the same block, or not at all.
    * A write outside :meth:`atomic`, and an atomic block, returns only once its commit is
      durable (SQLite: synchronous FULL; PostgreSQL: the store refuses to run with
      ``synchronous_commit`` off).
    * A read sees committed state, and inside :meth:`atomic` also that block's own writes. Reads
      are not repeatable across calls: two reads may see different commits in between.
    * Text keys order bytewise (SQLite's order; PostgreSQL uses the ``"C"`` collation).
    * ε values are exact :class:`~fractions.Fraction` s, never floats.
    """

    # -- transactions ----------------------------------------------------------------------
    @abc.abstractmethod
    def atomic(self) -> contextlib.AbstractContextManager[Any]:
        """A context manager: one write transaction for everything this thread writes in it.

        Yields the database connection, on which the broker appends log entries
        (``BrokerAudit.joined``), so a ledger change and the entry recording it commit together,
        in the order the ledger saw them. The store's own writes inside the block join it as
        savepoints (a refused reservation undoes only its own rows). Blocks are serialized
        with each other and with every log append: SQLite runs them one at a time on its
        writer connection; PostgreSQL first takes the log's transaction-level advisory lock
        (``LOG_LOCK_KEY``), so blocks of different replicas queue too. Blocks do not nest:
        opening one inside another raises ``INTERNAL``. An exception rolls back the whole block.
        """

    # -- catalog ---------------------------------------------------------------------------
    @abc.abstractmethod
    def put_dataset(self, reg: DatasetRegistration, connector: str) -> None:
        """Record ``reg`` as served by ``connector``, replacing any earlier registration of the same
        dataset id (an upsert: concurrent writers of one id leave one of them, whole)."""

    @abc.abstractmethod
    def list_datasets(self) -> list[tuple[DatasetRegistration, str]]:
        """Every registered dataset with its connector's name, ordered by dataset id."""

    @abc.abstractmethod
    def get_dataset(self, dataset_id: str) -> tuple[DatasetRegistration, str] | None:
        """The dataset's registration and connector name, or None when it was never registered."""

    # -- jobs ------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_job(self, job: JobRecord, reservations: list[Reservation]) -> tuple[JobRecord, bool]:
        """Insert ``job`` with its first event (seq 1) and reserve its budget, in one transaction.

        Returns ``(job, True)`` when created, ``(existing, False)`` when the same operator already
        submitted the same request digest under this id (an idempotent retry: nothing more is
        reserved). Raises ``ALREADY_EXISTS`` when the id belongs to a different job, and
        ``BUDGET_EXHAUSTED`` when a reservation would pass one of its limits (the checks and
        messages are :func:`yumen.policy.refusal`); either way nothing is written. Every limit of
        every reservation is checked before anything is charged.

        Concurrency: reservations on one account are serialized, across threads, processes and
        (PostgreSQL) replicas, so concurrent jobs can never together spend past a cap; two
        creators of one id get one creation and one idempotent answer (or ``ALREADY_EXISTS``).
        """

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None:
        """The job as last committed, or None when there is no such job. Jobs are never deleted."""

    @abc.abstractmethod
    def jobs_in_state(self, *states: JobState) -> list[JobRecord]:
        """Every job now in one of ``states``, oldest (``created_ms``) first."""

    @abc.abstractmethod
    def count_jobs(self, license: str, *states: JobState) -> int:
        """How many jobs of ``license`` are in one of ``states`` (the queued-jobs limit). Read inside
        :meth:`atomic`, as the broker does before creating a job, the count and the creation are
        serialized with every other block, so the limit holds exactly; outside, a plain read."""

    @abc.abstractmethod
    def set_state(self, job_id: str, state: JobState, message: str, *, result: dict[str, Any] | None = None,
                  expect: JobState | None = None) -> EventRecord | None:
        """Move a job to ``state`` (keeping its result unless ``result`` is given) and append the
        event with the next sequence number; returns that event.

        With ``expect`` this is a compare-and-set: the move happens only if the job is in
        ``expect`` now, else nothing changes and None is returned. A final job never moves
        (``INTERNAL``); an unknown job raises ``NOT_FOUND``. Moves of one job are serialized
        (PostgreSQL locks its row), so of two replicas racing on one ``expect`` exactly one wins,
        and event numbers stay 1, 2, 3, … without gaps or repeats.
        """

    @abc.abstractmethod
    def events(self, job_id: str, after_seq: int = 0) -> list[EventRecord]:
        """The job's events numbered above ``after_seq``, in sequence order ([] for an unknown job)."""

    # -- receipts --------------------------------------------------------------------------
    @abc.abstractmethod
    def put_partial(self, job_id: str, dataset: str, receipt: dict[str, Any], ciphertext: bytes = b"") -> bool:
        """Store a connector's receipt (and ciphertext) for one dataset of a job, once: True when
        stored, False for a duplicate delivery, which changes nothing (the first one stays).
        Concurrent deliveries of the same receipt store it once and return True to one of them."""

    @abc.abstractmethod
    def partials(self, job_id: str) -> dict[str, dict[str, Any]]:
        """The job's receipts by dataset; each dict is the stored receipt plus ``ciphertext``
        (bytes, ``b""`` when none)."""

    # -- budget ledger ---------------------------------------------------------------------
    @abc.abstractmethod
    def spent(self, license: str, dataset: str, period: str = "total") -> Fraction:
        """What the account (``license`` or ``"*"``, dataset or ``ns:…``, period) has spent; 0 when
        it was never charged."""

    @abc.abstractmethod
    def runs(self, license: str, dataset: str, period: str = "total") -> int:
        """How many runs the account has been charged (net of refunds); 0 when never charged."""

    @abc.abstractmethod
    def balance(self, account: Account) -> tuple[Fraction, int]:
        """An account's (spent, runs), read together from one row; (0, 0) when never charged."""

    @abc.abstractmethod
    def ledger(self) -> list[tuple[str, str, str, Fraction, int]]:
        """Every budget row, (license or ``"*"``, dataset, period, ε spent, runs), ordered by
        license, dataset, period. A refunded account stays, at zero."""

    @abc.abstractmethod
    def iter_reservations(self) -> Iterator[tuple[str, str, str, str, Fraction, bool, tuple[Charge, ...]]]:
        """Every reservation, (job, dataset, license, period, ε asked, released, charges), in the
        order they were made (``at_ms``, then job id). The charges are exactly what the
        reservation added to each account, which is what a release takes back."""

    @abc.abstractmethod
    def release_reservation(self, job_id: str, *, dataset: str = "",
                            keep_started: bool = False) -> list[tuple[str, tuple[Charge, ...]]]:
        """Give back a job's budget (one ``dataset``'s, or all of it), exactly as it was charged,
        and return what was given back: (dataset, charges) in dataset order.

        Only for data never touched: a job cancelled before dispatch, a dataset whose department
        refused, or (``keep_started``) every dataset of a cancelled or expired job that no
        department was let start. Idempotent: released reservations are skipped, so a second
        call returns []. Serialized with :meth:`start_ticket` on the same reservation (one
        transaction each; PostgreSQL locks the rows), so a dataset is either started and keeps
        its charge, or refunded and never starts.
        """

    # -- tickets ---------------------------------------------------------------------------
    @abc.abstractmethod
    def ticket_expiry(self, job_id: str, dataset: str, proposed_ms: int) -> int:
        """The expiry of the job's ticket on ``dataset``: ``proposed_ms`` the first time (set only
        if none is set, so of racing issuers the first commit wins), the same value for every
        re-issue after (a redelivery never extends it). ``proposed_ms`` when there is no such
        reservation (nothing is written)."""

    @abc.abstractmethod
    def start_ticket(self, job_id: str, dataset: str, at_ms: int) -> str:
        """Let the department start the job on ``dataset`` and record when, or say why not.

        Returns "" when it may start, or why not: no such job or reservation, the job is final,
        the reservation was released, or the ticket expired before ``at_ms``. A second call for a
        started dataset returns "" again and keeps the first start time (a retry). One write
        transaction that reads the job's state and the reservation (PostgreSQL: ``FOR UPDATE``),
        so it is serialized with a cancellation's :meth:`set_state` and
        :meth:`release_reservation`.
        """

    @abc.abstractmethod
    def ticket_states(self, job_id: str) -> dict[str, TicketState]:
        """Where each dataset's ticket of the job stands, by dataset ({} for an unknown job)."""

    # -- certificate revocation ------------------------------------------------------------
    @abc.abstractmethod
    def revoke_certificate(self, fingerprint: str, *, name: str, reason: str, by: str) -> dict[str, Any]:
        """Revoke a certificate and return its revocation record (keys ``fingerprint``, ``name``,
        ``reason``, ``revoked_by``, ``at_ms``). Idempotent: revoking it again keeps and returns
        the first record (insert-if-absent, also under concurrent revocations)."""

    @abc.abstractmethod
    def revoked(self, fingerprint: str) -> dict[str, Any] | None:
        """The certificate's revocation record, or None when it is not revoked."""

    @abc.abstractmethod
    def list_revoked(self) -> list[dict[str, Any]]:
        """Every revocation record, oldest first."""

    # -- licenses and policy versions ------------------------------------------------------
    @abc.abstractmethod
    def put_license(self, record: dict[str, Any]) -> None:
        """Store a license record under ``record["id"]``, replacing any earlier one (an upsert; the
        caller decides issue versus change inside :meth:`atomic` to make it a compare-and-set)."""

    @abc.abstractmethod
    def get_license(self, license_id: str) -> dict[str, Any] | None:
        """The license record as stored, or None."""

    @abc.abstractmethod
    def list_licenses(self) -> list[dict[str, Any]]:
        """Every license record, ordered by id."""

    @abc.abstractmethod
    def put_policy_version(self, version: str, bundle: dict[str, str], *, current: bool) -> None:
        """Store a policy bundle under ``version`` and, with ``current``, make it the current one,
        both in one transaction. A version is immutable: storing it again keeps the first bundle."""

    @abc.abstractmethod
    def policy_version(self, version: str) -> dict[str, str] | None:
        """The bundle stored under ``version``, or None."""

    @abc.abstractmethod
    def current_policy_version(self) -> str:
        """The version last made current ("" when none). A compare-and-set on it (a policy swap)
        reads and writes it inside one :meth:`atomic` block."""

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:  # not abstract: a store holding no pooled connections needs nothing
        """Release the store's connections; the default does nothing. After it, calls may fail."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    connector TEXT NOT NULL,
    registration TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    license TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    request TEXT NOT NULL,
    algorithm_source BLOB NOT NULL,
    he_context BLOB NOT NULL DEFAULT x'',
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    decision TEXT NOT NULL,
    result TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS budget (
    license TEXT NOT NULL,      -- '*' for an account of all licenses together (see _budget)
    dataset TEXT NOT NULL,      -- a dataset id, or 'ns:…' for a privacy-unit namespace
    period TEXT NOT NULL,
    spent TEXT NOT NULL,
    runs INTEGER NOT NULL,
    PRIMARY KEY (license, dataset, period)
);
CREATE TABLE IF NOT EXISTS reservations (
    job_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    license TEXT NOT NULL,
    period TEXT NOT NULL,
    epsilon TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    released INTEGER NOT NULL DEFAULT 0,  -- 1: given back because no data was touched
    charges TEXT NOT NULL DEFAULT '[]',   -- exactly what it added to each account (a refund takes back this)
    expires_ms INTEGER NOT NULL DEFAULT 0, -- the ticket's expiry, fixed when it is first issued (0: not yet)
    started_ms INTEGER NOT NULL DEFAULT 0, -- when the broker let the department start it (0: never)
    PRIMARY KEY (job_id, dataset)
);
CREATE TABLE IF NOT EXISTS licenses (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_versions (
    version TEXT PRIMARY KEY,
    bundle TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_certificates (
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS partials (
    job_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    receipt TEXT NOT NULL,
    ciphertext BLOB NOT NULL DEFAULT x'',
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, dataset)
);
"""


class SqliteStore(Store):
    """The embedded store (see module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # every write goes through one connection whose commits are shared (yumen.groupcommit)
        self._writes = GroupCommit(self._connect())
        self._db().executescript(_SCHEMA)  # executescript manages its own transaction
        columns = {row[1] for row in self._db().execute("PRAGMA table_info(reservations)")}
        if "charges" not in columns:  # state written before reservations recorded their charges
            self._db().execute("ALTER TABLE reservations ADD COLUMN charges TEXT NOT NULL DEFAULT '[]'")
        for column in ("expires_ms", "started_ms"):  # state written before tickets expired
            if column not in columns:
                self._db().execute(f"ALTER TABLE reservations ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def _db(self) -> sqlite3.Connection:
        """Inside a write block, the shared writer connection (it sees the batch's writes);
        elsewhere this thread's reader, which sees only committed state."""
        tx = getattr(self._local, "tx", None)
        if tx is not None:
            return tx
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    class _Tx:
        """A write transaction; inside :meth:`SqliteStore.atomic` a savepoint of the open one."""

        def __init__(self, db: sqlite3.Connection, nested: bool) -> None:
            self.db = db
            self.nested = nested

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("SAVEPOINT store_write" if self.nested else "BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            if self.nested:
                if exc_type:
                    self.db.execute("ROLLBACK TO store_write")
                self.db.execute("RELEASE store_write")
            else:
                self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> Any:
        if getattr(self._local, "atomic", False):
            return SqliteStore._Tx(self._db(), True)
        return self.atomic()

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Any]:
        """One write transaction for everything this thread writes inside the block.

        The store's own writes join it (each as a savepoint, so a refused reservation undoes
        only its own rows), and the broker appends log entries on the yielded connection:
        the log's tables live in the same database file, so a ledger change and the entry
        that records it commit together or not at all, in the order the ledger saw them.
        Blocks run one at a time on the writer connection (SQLite's single write lock is held
        by its open transaction); a block returns once the commit that holds it is durable,
        a commit shared with the blocks that ran beside it (group commit).
        """
        if getattr(self._local, "atomic", False):
            raise YumenError(Code.INTERNAL, "atomic store blocks do not nest")
        with self._writes.transaction() as db:
            self._local.atomic, self._local.tx = True, db
            try:
                yield db
            finally:
                self._local.atomic, self._local.tx = False, None

    # -- catalog -------------------------------------------------------------
    def put_dataset(self, reg: DatasetRegistration, connector: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO datasets(id, connector, registration, updated_ms) VALUES (?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET connector=excluded.connector, "
                "registration=excluded.registration, updated_ms=excluded.updated_ms",
                (reg.id, connector, json.dumps(reg.to_dict()), now_ms()),
            )

    def list_datasets(self) -> list[tuple[DatasetRegistration, str]]:
        rows = self._db().execute("SELECT registration, connector FROM datasets ORDER BY id").fetchall()
        return [(DatasetRegistration.from_dict(json.loads(r)), c) for r, c in rows]

    def get_dataset(self, dataset_id: str) -> tuple[DatasetRegistration, str] | None:
        row = self._db().execute("SELECT registration, connector FROM datasets WHERE id=?", (dataset_id,)).fetchone()
        return (DatasetRegistration.from_dict(json.loads(row[0])), row[1]) if row else None

    # -- jobs ----------------------------------------------------------------
    def _row_to_job(self, row: tuple[Any, ...]) -> JobRecord:
        return JobRecord(
            job_id=row[0], operator=row[1], license=row[2], request_digest=row[3],
            request=json.loads(row[4]), algorithm_source=bytes(row[5]), state=JobState(row[6]),
            message=row[7], decision=json.loads(row[8]),
            result=json.loads(row[9]) if row[9] else None, created_ms=row[10], updated_ms=row[11],
            he_context=bytes(row[12]),
        )

    _JOB_COLS = (
        "job_id, operator, license, request_digest, request, algorithm_source, state, message, "
        "decision, result, created_ms, updated_ms, he_context"
    )

    def create_job(self, job: JobRecord, reservations: list[Reservation]) -> tuple[JobRecord, bool]:
        """Insert ``job`` and reserve its budget atomically.

        Returns ``(job, True)`` when created, ``(existing, False)`` when the same operator
        already submitted the same request under this id (idempotent retry). Raises
        ``BUDGET_EXHAUSTED`` (nothing written) when a reservation would pass its cap.
        """
        with self._tx() as db:
            row = db.execute(f"SELECT {self._JOB_COLS} FROM jobs WHERE job_id=?", (job.job_id,)).fetchone()
            if row:
                existing = self._row_to_job(row)
                if existing.operator == job.operator and existing.request_digest == job.request_digest:
                    return existing, False
                raise YumenError(
                    Code.ALREADY_EXISTS,
                    f"job id {job.job_id!r} is already taken by a different job",
                    hint="choose a new job id, or omit it to have one generated",
                )
            for r in reservations:
                self._reserve(db, job.job_id, r, job.created_ms)
            db.execute(
                f"INSERT INTO jobs({self._JOB_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job.job_id, job.operator, job.license, job.request_digest, json.dumps(job.request),
                    job.algorithm_source, job.state.value, job.message, json.dumps(job.decision),
                    json.dumps(job.result) if job.result else None, job.created_ms, job.updated_ms,
                    job.he_context,
                ),
            )
            db.execute(
                "INSERT INTO job_events(job_id, seq, state, message, at_ms) VALUES (?,?,?,?,?)",
                (job.job_id, 1, job.state.value, job.message, job.created_ms),
            )
        return job, True

    @staticmethod
    def _budget_row(db: sqlite3.Connection, license: str, dataset: str, period: str) -> tuple[Fraction, int]:
        row = db.execute(
            "SELECT spent, runs FROM budget WHERE license=? AND dataset=? AND period=?", (license, dataset, period)
        ).fetchone()
        return (_frac(row[0]), int(row[1])) if row else (Fraction(0), 0)

    @staticmethod
    def _budget_add(db: sqlite3.Connection, account: Account, amount: Fraction, runs: int) -> None:
        spent, n = SqliteStore._budget_row(db, *account)
        db.execute(
            "INSERT INTO budget(license, dataset, period, spent, runs) VALUES (?,?,?,?,?) "
            "ON CONFLICT(license, dataset, period) DO UPDATE SET spent=excluded.spent, runs=excluded.runs",
            (*account, _frac_text(spent + amount), n + runs),
        )

    def _reserve(self, db: sqlite3.Connection, job_id: str, r: Reservation, at_ms: int) -> None:
        for limit in r.limits:  # every limit first: a refusal writes nothing
            spent, runs = self._budget_row(db, *limit.account)
            err = refusal(r, limit, spent, runs)
            if err is not None:
                raise err
        charges = r.charges()
        for c in charges:
            self._budget_add(db, c.account, c.amount, c.runs)
        db.execute(
            "INSERT INTO reservations(job_id, dataset, license, period, epsilon, at_ms, charges) VALUES (?,?,?,?,?,?,?)",
            (job_id, r.dataset, r.license, r.period, _frac_text(r.epsilon), at_ms,
             json.dumps([c.to_list() for c in charges])),
        )

    def release_reservation(self, job_id: str, *, dataset: str = "",
                            keep_started: bool = False) -> list[tuple[str, tuple[Charge, ...]]]:
        """Give back a job's budget (one dataset's, or all of it), exactly as it was charged.

        Only where the data was never touched: a job cancelled before dispatch, a dataset whose
        department refused, or (``keep_started``) every dataset of a cancelled or expired job
        that no department was let start. Released reservations are skipped, so this is
        idempotent.
        """
        out = []
        with self._tx() as db:
            rows = db.execute(
                "SELECT dataset, charges FROM reservations WHERE job_id=? AND released=0 AND (?='' OR dataset=?) "
                "AND (?=0 OR started_ms=0) ORDER BY dataset",
                (job_id, dataset, dataset, int(keep_started)),
            ).fetchall()
            for ds, charges_text in rows:
                charges = tuple(Charge.from_list(c) for c in json.loads(charges_text))
                for c in charges:
                    self._budget_add(db, c.account, -c.amount, -c.runs)
                db.execute("UPDATE reservations SET released=1 WHERE job_id=? AND dataset=?", (job_id, ds))
                out.append((ds, charges))
        return out

    def ticket_expiry(self, job_id: str, dataset: str, proposed_ms: int) -> int:
        """The expiry of the job's ticket on ``dataset``: ``proposed_ms`` the first time a ticket is
        issued, the same value for every re-issue (a redelivery never extends it)."""
        with self._tx() as db:
            db.execute("UPDATE reservations SET expires_ms=? WHERE job_id=? AND dataset=? AND expires_ms=0",
                       (proposed_ms, job_id, dataset))
            row = db.execute("SELECT expires_ms FROM reservations WHERE job_id=? AND dataset=?",
                             (job_id, dataset)).fetchone()
        return int(row[0]) if row else proposed_ms

    def start_ticket(self, job_id: str, dataset: str, at_ms: int) -> str:
        """Let the department start the job on ``dataset`` (recording when), or say why not.

        One write transaction, so a start and a cancellation or expiry of the same job are
        serialized: a started dataset keeps its charge, a refunded one never starts.
        """
        with self._tx() as db:
            job = db.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            res = db.execute("SELECT released, expires_ms, started_ms FROM reservations WHERE job_id=? AND dataset=?",
                             (job_id, dataset)).fetchone()
            why = _start_refusal(job[0] if job else None, tuple(res) if res else None, at_ms)
            if not why:
                db.execute("UPDATE reservations SET started_ms=? WHERE job_id=? AND dataset=? AND started_ms=0",
                           (at_ms, job_id, dataset))
        return why

    def ticket_states(self, job_id: str) -> dict[str, TicketState]:
        rows = self._db().execute("SELECT dataset, expires_ms, started_ms, released FROM reservations WHERE job_id=?",
                                  (job_id,)).fetchall()
        return {ds: TicketState(expires_ms=int(e), started_ms=int(st), released=bool(r)) for ds, e, st, r in rows}

    # -- certificate revocation --------------------------------------------------------
    def revoke_certificate(self, fingerprint: str, *, name: str, reason: str, by: str) -> dict[str, Any]:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO revoked_certificates(fingerprint, name, reason, revoked_by, at_ms) VALUES (?,?,?,?,?)",
                (fingerprint, name, reason, by, now_ms()),
            )
        return self.revoked(fingerprint) or {}

    def revoked(self, fingerprint: str) -> dict[str, Any] | None:
        row = self._db().execute(
            "SELECT fingerprint, name, reason, revoked_by, at_ms FROM revoked_certificates WHERE fingerprint=?", (fingerprint,)
        ).fetchone()
        return dict(zip(("fingerprint", "name", "reason", "revoked_by", "at_ms"), row)) if row else None

    def list_revoked(self) -> list[dict[str, Any]]:
        rows = self._db().execute(
            "SELECT fingerprint, name, reason, revoked_by, at_ms FROM revoked_certificates ORDER BY at_ms"
        ).fetchall()
        return [dict(zip(("fingerprint", "name", "reason", "revoked_by", "at_ms"), r)) for r in rows]

    # -- licenses and policy versions ---------------------------------------------
    def put_license(self, record: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO licenses(id, record, updated_ms) VALUES (?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET record=excluded.record, updated_ms=excluded.updated_ms",
                (record["id"], json.dumps(record, sort_keys=True), now_ms()),
            )

    def get_license(self, license_id: str) -> dict[str, Any] | None:
        row = self._db().execute("SELECT record FROM licenses WHERE id=?", (license_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def list_licenses(self) -> list[dict[str, Any]]:
        return [json.loads(r) for (r,) in self._db().execute("SELECT record FROM licenses ORDER BY id")]

    def put_policy_version(self, version: str, bundle: dict[str, str], *, current: bool) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO policy_versions(version, bundle, created_ms) VALUES (?,?,?)",
                (version, json.dumps(bundle, sort_keys=True), now_ms()),
            )
            if current:
                db.execute(
                    "INSERT INTO settings(key, value) VALUES ('policy_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (version,),
                )

    def policy_version(self, version: str) -> dict[str, str] | None:
        row = self._db().execute("SELECT bundle FROM policy_versions WHERE version=?", (version,)).fetchone()
        return json.loads(row[0]) if row else None

    def current_policy_version(self) -> str:
        row = self._db().execute("SELECT value FROM settings WHERE key='policy_version'").fetchone()
        return row[0] if row else ""

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._db().execute(f"SELECT {self._JOB_COLS} FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return self._row_to_job(row) if row else None

    def jobs_in_state(self, *states: JobState) -> list[JobRecord]:
        marks = ",".join("?" for _ in states)
        rows = self._db().execute(
            f"SELECT {self._JOB_COLS} FROM jobs WHERE state IN ({marks}) ORDER BY created_ms",
            [s.value for s in states],
        ).fetchall()
        return [self._row_to_job(r) for r in rows]

    def count_jobs(self, license: str, *states: JobState) -> int:
        """How many jobs of ``license`` are in one of ``states`` (the queued-jobs limit)."""
        marks = ",".join("?" for _ in states)
        (n,) = self._db().execute(
            f"SELECT COUNT(*) FROM jobs WHERE license=? AND state IN ({marks})", [license, *(s.value for s in states)]
        ).fetchone()
        return int(n)

    def set_state(
        self, job_id: str, state: JobState, message: str, *, result: dict[str, Any] | None = None,
        expect: JobState | None = None,
    ) -> EventRecord | None:
        """Move a job to ``state`` and record the event; a final job never moves.

        With ``expect``, the move happens only if the job is in that state now (compare and
        set, atomic across broker replicas); otherwise nothing changes and None is returned.
        """
        at = now_ms()
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if row is None:
                raise YumenError(Code.NOT_FOUND, f"no job {job_id!r}")
            if expect is not None and JobState(row[0]) is not expect:
                return None
            if JobState(row[0]).final:
                raise YumenError(Code.INTERNAL, f"job {job_id} is already {row[0]}; cannot move it to {state.value}")
            db.execute(
                "UPDATE jobs SET state=?, message=?, updated_ms=?, result=COALESCE(?, result) WHERE job_id=?",
                (state.value, message, at, json.dumps(result) if result is not None else None, job_id),
            )
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id=?", (job_id,)).fetchone()[0]
            db.execute(
                "INSERT INTO job_events(job_id, seq, state, message, at_ms) VALUES (?,?,?,?,?)",
                (job_id, seq, state.value, message, at),
            )
        return EventRecord(job_id=job_id, seq=seq, state=state, message=message, at_ms=at)

    def events(self, job_id: str, after_seq: int = 0) -> list[EventRecord]:
        rows = self._db().execute(
            "SELECT seq, state, message, at_ms FROM job_events WHERE job_id=? AND seq>? ORDER BY seq",
            (job_id, after_seq),
        ).fetchall()
        return [EventRecord(job_id=job_id, seq=s, state=JobState(st), message=m, at_ms=a) for s, st, m, a in rows]

    def put_partial(self, job_id: str, dataset: str, receipt: dict[str, Any], ciphertext: bytes = b"") -> bool:
        """Store a connector's receipt (and ciphertext) once; a duplicate delivery returns False."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO partials(job_id, dataset, receipt, ciphertext, at_ms) VALUES (?,?,?,?,?)",
                (job_id, dataset, json.dumps(receipt), ciphertext, now_ms()),
            )
            return cur.rowcount == 1

    def partials(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Receipts by dataset; each dict has ``payload``, ``signature`` and ``ciphertext`` (bytes)."""
        rows = self._db().execute("SELECT dataset, receipt, ciphertext FROM partials WHERE job_id=?", (job_id,)).fetchall()
        return {d: {**json.loads(r), "ciphertext": bytes(c)} for d, r, c in rows}

    def spent(self, license: str, dataset: str, period: str = "total") -> Fraction:
        """What the account (``license`` or ``"*"``, dataset or ``ns:…``, window) has spent."""
        return self._budget_row(self._db(), license, dataset, period)[0]

    def balance(self, account: Account) -> tuple[Fraction, int]:
        """An account's spent amount and run count (zero when it was never charged)."""
        return self._budget_row(self._db(), *account)

    def ledger(self) -> list[tuple[str, str, str, Fraction, int]]:
        """Every budget row: (license or "*", dataset, period, ε spent, runs)."""
        rows = self._db().execute("SELECT license, dataset, period, spent, runs FROM budget ORDER BY 1, 2, 3").fetchall()
        return [(lic, ds, period, _frac(spent), int(runs)) for lic, ds, period, spent, runs in rows]

    def runs(self, license: str, dataset: str, period: str = "total") -> int:
        return self._budget_row(self._db(), license, dataset, period)[1]

    def iter_reservations(self) -> Iterator[tuple[str, str, str, str, Fraction, bool, tuple[Charge, ...]]]:
        """Every reservation: (job, dataset, license, period, ε asked, released, charges)."""
        for job_id, dataset, lic, period, eps, released, charges in self._db().execute(
            "SELECT job_id, dataset, license, period, epsilon, released, charges FROM reservations ORDER BY at_ms, job_id"
        ):
            yield (job_id, dataset, lic, period, _frac(eps), bool(released),
                   tuple(Charge.from_list(c) for c in json.loads(charges)))
