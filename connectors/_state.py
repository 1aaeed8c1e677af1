"""The connector's own durable state: executed tickets, their receipts and salts.

A ticket is executed at most once: its (job, dataset) key is claimed before any data
is touched, and a second delivery gets the stored receipt back instead of a second run.
The salts of output commitments stay here, so that the department (and only it) can
later re-execute a logged job and open the commitment for an auditor.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

__all__ = ["ConnectorState"]


class ConnectorState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS executions (
                job_id TEXT NOT NULL,
                dataset TEXT NOT NULL,
                ticket_digest TEXT NOT NULL,
                state TEXT NOT NULL,           -- claimed | done
                receipt_payload BLOB,
                receipt_signature BLOB,
                salt BLOB,
                at_ms INTEGER NOT NULL,
                PRIMARY KEY (job_id, dataset)
            );
        """)

    def claim(self, job_id: str, dataset: str, ticket_digest: str) -> tuple[bool, tuple[bytes, bytes] | None]:
        """Claim a ticket. Returns (claimed, stored receipt if already done)."""
        with self._lock:
            row = self._db.execute(
                "SELECT state, receipt_payload, receipt_signature FROM executions WHERE job_id=? AND dataset=?",
                (job_id, dataset),
            ).fetchone()
            if row is not None:
                if row[0] == "done":
                    return False, (bytes(row[1]), bytes(row[2]))
                return False, None
            self._db.execute(
                "INSERT INTO executions(job_id, dataset, ticket_digest, state, at_ms) VALUES (?,?,?,?,?)",
                (job_id, dataset, ticket_digest, "claimed", int(time.time() * 1000)),
            )
            return True, None

    def finish(self, job_id: str, dataset: str, payload: bytes, signature: bytes, salt: bytes | None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE executions SET state='done', receipt_payload=?, receipt_signature=?, salt=? "
                "WHERE job_id=? AND dataset=?",
                (payload, signature, salt, job_id, dataset),
            )

    def interrupted(self) -> list[tuple[str, str]]:
        """Tickets claimed but never finished (the connector died mid-job)."""
        with self._lock:
            return self._db.execute("SELECT job_id, dataset FROM executions WHERE state='claimed'").fetchall()

    def salt(self, job_id: str, dataset: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT salt FROM executions WHERE job_id=? AND dataset=?", (job_id, dataset)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None
