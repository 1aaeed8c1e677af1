"""The connector's own durable state: executed tickets, receipts, salts, approvals, ledger.

A ticket is executed at most once: its (job, dataset) key is claimed before any data
is touched, and a second delivery gets the stored receipt back instead of a second run.
The salts of output commitments stay here, so that the department (and only it) can
later re-execute a logged job and open the commitment for an auditor.

The department's own privacy ledger lives here too: the connector charges ε per dataset
per period before it touches data, and refuses a ticket that would overrun the local cap
even when the broker allowed it. Algorithm approvals (reviews of code by digest) are kept
here and administered with ``yumen approvals``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from yumen.groupcommit import GroupCommit

__all__ = ["ConnectorState"]


class ConnectorState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()  # the reader connection above: committed state only
        # Writes go through their own connection, group-committed: workers that write at the same
        # time share one fsync, and each write is durable before its method returns.
        writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        writer.execute("PRAGMA synchronous=FULL")
        self._writes = GroupCommit(writer)
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS executions (
                job_id TEXT NOT NULL,
                dataset TEXT NOT NULL,
                ticket_digest TEXT NOT NULL,
                state TEXT NOT NULL,           -- claimed | done
                receipt_payload BLOB,
                receipt_signature BLOB,
                ciphertext BLOB,
                salt BLOB,
                at_ms INTEGER NOT NULL,
                release_ms INTEGER NOT NULL DEFAULT 0,  -- the receipt leaves no earlier (algorithm tiers)
                PRIMARY KEY (job_id, dataset)
            );
            CREATE TABLE IF NOT EXISTS ledger (
                dataset TEXT NOT NULL,
                period TEXT NOT NULL,
                spent TEXT NOT NULL,
                PRIMARY KEY (dataset, period)
            );
            CREATE TABLE IF NOT EXISTS approvals (
                digest TEXT PRIMARY KEY,
                status TEXT NOT NULL,          -- pending | approved | rejected
                source BLOB NOT NULL,
                request TEXT NOT NULL,         -- operator, purpose, outputs, dataset, first job id
                limits TEXT NOT NULL,          -- {"max_epsilon": "...", "max_runs": n, "until": "..."}
                runs INTEGER NOT NULL DEFAULT 0,
                note TEXT NOT NULL DEFAULT '',
                decided_by TEXT NOT NULL DEFAULT '',
                requested_ms INTEGER NOT NULL,
                decided_ms INTEGER
            );
            CREATE TABLE IF NOT EXISTS failures (  -- the department's own record of why jobs failed
                job_id TEXT NOT NULL,
                dataset TEXT NOT NULL,
                algorithm_digest TEXT NOT NULL, -- '' for queries
                kind TEXT NOT NULL,             -- the status class the operator was told
                detail TEXT NOT NULL,           -- what really happened: never leaves the department
                at_ms INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS failures_digest ON failures(algorithm_digest);
        """)
        # state written by an earlier version of the connector lacks the release time
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(executions)")}
        if "release_ms" not in columns:
            self._db.execute("ALTER TABLE executions ADD COLUMN release_ms INTEGER NOT NULL DEFAULT 0")

    def claim(self, job_id: str, dataset: str, ticket_digest: str) -> tuple[bool, tuple[bytes, bytes, bytes] | None]:
        """Claim a ticket. Returns (claimed, stored receipt and ciphertext if already done)."""
        with self._writes.transaction() as db:
            row = db.execute(
                "SELECT state, receipt_payload, receipt_signature, ciphertext FROM executions WHERE job_id=? AND dataset=?",
                (job_id, dataset),
            ).fetchone()
            if row is not None:
                if row[0] == "done":
                    return False, (bytes(row[1]), bytes(row[2]), bytes(row[3] or b""))
                return False, None
            db.execute(
                "INSERT INTO executions(job_id, dataset, ticket_digest, state, at_ms) VALUES (?,?,?,?,?)",
                (job_id, dataset, ticket_digest, "claimed", int(time.time() * 1000)),
            )
            return True, None

    def unclaim(self, job_id: str, dataset: str) -> None:
        """Forget a claim that never touched data (the broker could not confirm the start), so a
        redelivered ticket is asked about again instead of being reported as interrupted."""
        with self._lock:
            self._db.execute("DELETE FROM executions WHERE job_id=? AND dataset=? AND state='claimed'", (job_id, dataset))

    def finish(self, job_id: str, dataset: str, payload: bytes, signature: bytes, salt: bytes | None,
               ciphertext: bytes = b"", *, release_ms: int = 0) -> None:
        with self._writes.transaction() as db:
            db.execute(
                "UPDATE executions SET state='done', receipt_payload=?, receipt_signature=?, salt=?, ciphertext=?, "
                "release_ms=? WHERE job_id=? AND dataset=?",
                (payload, signature, salt, ciphertext, release_ms, job_id, dataset),
            )

    def claimed_at_ms(self, job_id: str, dataset: str) -> int:
        """When a ticket was claimed (0 if never)."""
        with self._lock:
            row = self._db.execute("SELECT at_ms FROM executions WHERE job_id=? AND dataset=?", (job_id, dataset)).fetchone()
        return int(row[0]) if row else 0

    def release_ms(self, job_id: str, dataset: str) -> int:
        """When a finished execution's receipt may leave (0: at once)."""
        with self._lock:
            row = self._db.execute("SELECT release_ms FROM executions WHERE job_id=? AND dataset=?",
                                   (job_id, dataset)).fetchone()
        return int(row[0]) if row else 0

    def interrupted(self) -> list[tuple[str, str]]:
        """Tickets claimed but never finished (the connector died mid-job)."""
        with self._lock:
            return self._db.execute("SELECT job_id, dataset FROM executions WHERE state='claimed'").fetchall()

    def execution(self, job_id: str, dataset: str) -> tuple[bytes, bytes] | None:
        """The stored receipt payload and commitment salt of a finished execution."""
        with self._lock:
            row = self._db.execute(
                "SELECT receipt_payload, salt FROM executions WHERE job_id=? AND dataset=? AND state='done'",
                (job_id, dataset),
            ).fetchone()
        return (bytes(row[0]), bytes(row[1] or b"")) if row else None

    def salt(self, job_id: str, dataset: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT salt FROM executions WHERE job_id=? AND dataset=?", (job_id, dataset)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    # -- failures: the detail the operator is not told ---------------------------------
    def record_failure(self, job_id: str, dataset: str, *, algorithm_digest: str, kind: str, detail: str) -> None:
        with self._writes.transaction() as db:
            db.execute(
                "INSERT INTO failures(job_id, dataset, algorithm_digest, kind, detail, at_ms) VALUES (?,?,?,?,?,?)",
                (job_id, dataset, algorithm_digest, kind, detail[:4000], int(time.time() * 1000)),
            )

    def failures(self, algorithm_digest: str | None = None) -> list[dict[str, Any]]:
        """Recorded failures, oldest first (of one algorithm, or all of them)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, dataset, algorithm_digest, kind, detail, at_ms FROM failures "
                "WHERE ? IS NULL OR algorithm_digest=? ORDER BY at_ms", (algorithm_digest, algorithm_digest),
            ).fetchall()
        keys = ("job_id", "dataset", "algorithm_digest", "kind", "detail", "at_ms")
        return [dict(zip(keys, r)) for r in rows]

    # -- the department's own ledger --------------------------------------------------
    def charge(self, dataset: str, period: str, epsilon: Fraction, cap: Fraction) -> Fraction | None:
        """Charge ``epsilon`` to the dataset's local ledger; return None, or what is left when it would overrun."""
        with self._writes.transaction() as db:
            row = db.execute("SELECT spent FROM ledger WHERE dataset=? AND period=?", (dataset, period)).fetchone()
            spent = Fraction(row[0]) if row else Fraction(0)
            if spent + epsilon > cap:
                return max(cap - spent, Fraction(0))
            total = spent + epsilon
            db.execute(
                "INSERT INTO ledger(dataset, period, spent) VALUES (?,?,?) "
                "ON CONFLICT(dataset, period) DO UPDATE SET spent=excluded.spent",
                (dataset, period, f"{total.numerator}/{total.denominator}"),
            )
            return None

    def spent(self, dataset: str, period: str) -> Fraction:
        with self._lock:
            row = self._db.execute("SELECT spent FROM ledger WHERE dataset=? AND period=?", (dataset, period)).fetchone()
        return Fraction(row[0]) if row else Fraction(0)

    # -- approvals ----------------------------------------------------------------------
    def approval(self, digest: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT digest, status, source, request, limits, runs, note, decided_by, requested_ms, decided_ms "
                "FROM approvals WHERE digest=?", (digest,),
            ).fetchone()
        return self._approval_row(row) if row else None

    @staticmethod
    def _approval_row(row: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "digest": row[0], "status": row[1], "source": bytes(row[2]), "request": json.loads(row[3]),
            "limits": json.loads(row[4]), "runs": row[5], "note": row[6], "decided_by": row[7],
            "requested_ms": row[8], "decided_ms": row[9],
        }

    def approvals(self, status: str = "") -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT digest, status, source, request, limits, runs, note, decided_by, requested_ms, decided_ms "
                "FROM approvals WHERE ?='' OR status=? ORDER BY requested_ms", (status, status),
            ).fetchall()
        return [self._approval_row(r) for r in rows]

    def request_approval(self, digest: str, source: bytes, request: dict[str, Any]) -> None:
        with self._writes.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO approvals(digest, status, source, request, limits, requested_ms) VALUES (?,?,?,?,?,?)",
                (digest, "pending", source, json.dumps(request, sort_keys=True), "{}", int(time.time() * 1000)),
            )

    def decide_approval(self, digest: str, status: str, *, limits: dict[str, Any], note: str, by: str) -> bool:
        with self._writes.transaction() as db:
            cur = db.execute(
                "UPDATE approvals SET status=?, limits=?, note=?, decided_by=?, decided_ms=? WHERE digest=?",
                (status, json.dumps(limits, sort_keys=True), note, by, int(time.time() * 1000), digest),
            )
            return cur.rowcount == 1

    def count_approved_run(self, digest: str, max_runs: int) -> bool:
        """Count one run of an approved algorithm; False when its run limit is reached."""
        with self._writes.transaction() as db:
            cur = db.execute(
                "UPDATE approvals SET runs = runs + 1 WHERE digest=? AND status='approved' AND (?=0 OR runs < ?)",
                (digest, max_runs, max_runs),
            )
            return cur.rowcount == 1
