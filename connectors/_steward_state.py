"""The connector's stewardship state: quality reports, feedback received, verification counts,
destruction confirmations of expired versions.

Kept in its own SQLite file beside ``connector.db`` (``steward.db``), so the execution state's
schema stays the executor's own.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["StewardState"]


class _Take:
    """One request's cap counting, waiting for the group commit that decides it."""

    __slots__ = ("window", "limits", "done", "result", "error")

    def __init__(self, window: str, limits: list[tuple[str, int]]) -> None:
        self.window = window
        self.limits = limits
        self.done = False
        self.result = ""
        self.error: BaseException | None = None


class StewardState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()
        self._group = threading.Condition()
        self._pending: list[_Take] = []
        self._writing = False
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS quality (
                dataset TEXT NOT NULL,
                version TEXT NOT NULL,
                report BLOB NOT NULL,          -- canonical JSON of the released report
                signature BLOB NOT NULL,
                published INTEGER NOT NULL,    -- 1: published; 0: withheld by the department's thresholds
                first_seen_ms INTEGER NOT NULL,
                PRIMARY KEY (dataset, version)
            );
            CREATE TABLE IF NOT EXISTS feedback (
                id TEXT PRIMARY KEY,
                dataset TEXT NOT NULL,
                payload BLOB NOT NULL,         -- the broker-signed feedback as received
                received_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS verification_counts (
                window TEXT NOT NULL,          -- e.g. "day:20512"
                key TEXT NOT NULL,             -- "license:<id>:<dataset>" or "subject:<dataset>:<keyed hash>"
                count INTEGER NOT NULL,
                PRIMARY KEY (window, key)
            );
            CREATE TABLE IF NOT EXISTS destructions (
                id TEXT PRIMARY KEY,           -- dataset/version
                payload BLOB NOT NULL,         -- the signed confirmation
                signature BLOB NOT NULL,
                sent INTEGER NOT NULL DEFAULT 0
            );
        """)

    # -- quality -------------------------------------------------------------------------
    def put_report(self, dataset: str, version: str, report: bytes, signature: bytes, *, published: bool,
                   first_seen_ms: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO quality(dataset, version, report, signature, published, first_seen_ms) "
                "VALUES (?,?,?,?,?,?)", (dataset, version, report, signature, int(published), first_seen_ms))

    def report(self, dataset: str, version: str) -> tuple[bytes, bytes, bool] | None:
        with self._lock:
            row = self._db.execute("SELECT report, signature, published FROM quality WHERE dataset=? AND version=?",
                                   (dataset, version)).fetchone()
        return (bytes(row[0]), bytes(row[1]), bool(row[2])) if row else None

    def latest_published(self, dataset: str, *, before_ms: int | None = None) -> tuple[bytes, bytes] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT report, signature FROM quality WHERE dataset=? AND published=1 AND (? IS NULL OR first_seen_ms < ?) "
                "ORDER BY first_seen_ms DESC LIMIT 1", (dataset, before_ms, before_ms)).fetchone()
        return (bytes(row[0]), bytes(row[1])) if row else None

    def reports(self, dataset: str = "") -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT dataset, version, report, published, first_seen_ms FROM quality WHERE ?='' OR dataset=? "
                "ORDER BY first_seen_ms", (dataset, dataset)).fetchall()
        return [{"dataset": r[0], "version": r[1], "report": json.loads(r[2]), "published": bool(r[3]),
                 "first_seen_ms": r[4]} for r in rows]

    # -- feedback ------------------------------------------------------------------------
    def put_feedback(self, feedback_id: str, dataset: str, payload: bytes) -> bool:
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO feedback(id, dataset, payload, received_ms) VALUES (?,?,?,?)",
                                   (feedback_id, dataset, payload, int(time.time() * 1000)))
            return cur.rowcount == 1

    def feedback(self, dataset: str = "") -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT payload, received_ms FROM feedback WHERE ?='' OR dataset=? ORDER BY received_ms",
                                    (dataset, dataset)).fetchall()
        return [dict(json.loads(r[0]), received_ms=r[1]) for r in rows]

    # -- verification caps -------------------------------------------------------------
    def take(self, window: str, limits: list[tuple[str, int]]) -> str:
        """Count one use against each ``(key, limit)`` in ``window``, all or nothing, durably.

        Returns "" when every count was below its limit (and all were incremented, and the
        increments are committed with ``synchronous=FULL`` before this returns), else the key
        whose limit is reached (and nothing was counted).

        Group commit: requests that arrive while a commit is being written wait, and the next
        committer writes all of them in one transaction (one fsync for the group). Each
        request is still decided on its own and in arrival order; none returns before the
        transaction holding its count is durable. An fsync per request bounded answers to
        a few hundred a second on one disk however many arrived at once.
        """
        item = _Take(window, limits)
        with self._group:
            self._pending.append(item)
            while not item.done:
                if not self._writing:
                    self._writing = True
                    batch, self._pending = self._pending, []
                    break
                self._group.wait()
        if not item.done:
            try:
                self._commit(batch)
            finally:
                with self._group:
                    self._writing = False
                    self._group.notify_all()
        if item.error is not None:
            raise item.error
        return item.result

    def _commit(self, batch: list["_Take"]) -> None:
        counts: dict[tuple[str, str], int] = {}
        dirty: set[tuple[str, str]] = set()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for item in batch:
                    for key, _ in item.limits:
                        if (item.window, key) not in counts:
                            row = self._db.execute("SELECT count FROM verification_counts WHERE window=? AND key=?",
                                                   (item.window, key)).fetchone()
                            counts[(item.window, key)] = row[0] if row else 0
                    hit = next((key for key, limit in item.limits if counts[(item.window, key)] >= limit), "")
                    item.result = hit
                    if not hit:
                        for key, _ in item.limits:
                            counts[(item.window, key)] += 1
                            dirty.add((item.window, key))
                self._db.executemany(
                    "INSERT INTO verification_counts(window, key, count) VALUES (?,?,?) "
                    "ON CONFLICT(window, key) DO UPDATE SET count = excluded.count",
                    [(w, k, counts[(w, k)]) for w, k in sorted(dirty)])
                self._db.execute("COMMIT")
            except BaseException as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                for item in batch:
                    item.error = e if isinstance(e, Exception) else RuntimeError("interrupted")
                raise
            finally:
                for item in batch:
                    item.done = True

    def used(self, window: str, key: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT count FROM verification_counts WHERE window=? AND key=?", (window, key)).fetchone()
        return int(row[0]) if row else 0

    # -- destruction of expired versions -------------------------------------------------
    def put_destruction(self, ident: str, payload: bytes, signature: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO destructions(id, payload, signature, sent) VALUES (?,?,?,0)",
                             (ident, payload, signature))

    def unsent_destructions(self) -> list[tuple[str, bytes, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT id, payload, signature FROM destructions WHERE sent=0 ORDER BY id").fetchall()
        return [(r[0], bytes(r[1]), bytes(r[2])) for r in rows]

    def mark_sent(self, ident: str) -> None:
        with self._lock:
            self._db.execute("UPDATE destructions SET sent=1 WHERE id=?", (ident,))

    def destructions(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT payload, sent FROM destructions ORDER BY id").fetchall()
        return [dict(json.loads(r[0]), sent=bool(r[1])) for r in rows]
