"""Executing one broker-signed ticket next to the data, and signing the receipt.

Order matters: the ticket's signature (against the pinned broker key), audience, expiry
and replay are checked, then the department's own policy, and only then is the data
touched. Whatever happens after that, a receipt is produced: "ok" with released values,
"failed" with a short safe error, or "refused" before any data was read.

Nothing in a receipt is a raw row or a pre-noise value: values come from
``DPRelease.to_dict()``, and the pre-noise output is present only as a salted SHA-256
commitment whose salt stays in the connector's state.

Nor does anything else in a receipt depend on the data beyond what DP covers. A failure
after data was read is told to the operator as one fixed message per kind
(:data:`PUBLIC_FAILURES`); what really happened (exit codes, undeclared output names,
exception text) goes to the department's log and to the algorithm's approval review
(``yumen approvals show``). Results of the algorithm tiers leave at a deadline fixed before
the job runs (:mod:`yumen.connectors._timing`), with no wall or CPU time in the receipt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from yumen.canonical import canonical_json
from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError
from yumen.jobs import OutputRange, Query, format_epsilon
from yumen.loss import Accounting, rho_of_epsilon
from yumen.sandboxes import stronger
from yumen.tickets import Receipt, ReleasedValue, Ticket

from yumen.connectors._config import ConnectorConfig
from yumen.connectors._sources import DataSource, open_source
from yumen.connectors._state import ConnectorState
from yumen.connectors._timing import Schedule, Timing, release_at, schedule_for

log = logging.getLogger(__name__)

__all__ = ["Executor", "PUBLIC_FAILURES", "Pinned", "ServedDataset"]

# The only words about a failure that leave the department: one fixed message per kind. The
# kind itself is data-dependent (an approved algorithm may fail one way or another on
# purpose), so it is at most log2(len(PUBLIC_FAILURES)) bits per failed job; docs/privacy.md.
PUBLIC_FAILURES = {
    "error": "the algorithm ended with an error",
    "timeout": "the algorithm did not finish within its time limit",
    "memory": "the algorithm ran out of memory",
    "output-too-large": "the algorithm wrote more output than allowed",
    "invalid-output": "the algorithm's output did not match its declared outputs",
    "killed": "the algorithm was stopped by a signal",
    "query": "the query failed at the department after the data was read",
    "internal": "the department's connector failed while running the job",
    "interrupted": "the job was interrupted by a restart of the department's connector",
}


def public_failure(kind: str, *, algorithm: bool) -> str:
    """The operator's message for a failure of ``kind``."""
    tail = "; try the algorithm on mock data with `yumen dev run`" if algorithm else ""
    return f"{PUBLIC_FAILURES[kind]} (the department keeps the details){tail}"


class JobFailure(Exception):
    """A failure after data was read. ``kind`` is what the operator learns; ``detail`` stays here.

    ``fields`` are receipt fields known at the time (algorithm and runtime digests, backend).
    """

    def __init__(self, kind: str, detail: str, **fields: Any) -> None:
        if kind not in PUBLIC_FAILURES:
            raise YumenError(Code.INTERNAL, f"unknown failure kind {kind!r}")
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.fields = fields


# The users a job's sandboxes run as (as root): bubblewrap's range of per-job uids (its
# defaults), and the container user of the Docker backends.
_JOB_UID_BASE, _JOB_UID_COUNT = 2_000_000_000, 1_000_000
_CONTAINER_UID = 65534

# The extra output of every sample-and-aggregate release: the (noisy) share of failed blocks.
FAILED_SHARE = "_failed_share"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pinned:
    """One dataset version: its registration, its snapshot file, and (lazily) its bounded frame.

    Every job runs on the snapshot of the version its receipt names, never on the live
    source, so a source that changes mid-job cannot make the receipt lie, and a later audit
    can re-run the job on exactly the same rows.
    """

    registration: DatasetRegistration
    snapshot: Path | None
    # a source whose queries run in its own engine (``pushdown = true``): no snapshot is taken,
    # the version is the engine's fingerprint of the rows, and only queries are served
    pushdown: Any = None
    _bounded: list[Any] = dataclasses.field(default_factory=list, compare=False, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, compare=False, repr=False)

    def frame(self) -> Any:
        """The snapshot with contributions truncated once per version (shared by all queries)."""
        import polars as pl

        from yumen.privacy import bound_contributions

        if self.snapshot is None:
            raise YumenError(Code.DEPARTMENT_REFUSED, f"dataset {self.registration.id} is served by pushdown: "
                             "its rows stay in the department's engine, so only queries can run on it")
        with self._lock:
            if not self._bounded:
                self._bounded.append(bound_contributions(pl.scan_parquet(self.snapshot), self.registration))
            return self._bounded[0]


class ServedDataset:
    """A configured dataset with its source and the version currently pinned."""

    def __init__(self, registration: DatasetRegistration, source: DataSource, snapshots: Path,
                 retention_days: float = 90.0, gate: Any = None) -> None:
        self.base = registration
        self.source = source
        self.snapshots = snapshots
        self.retention_days = retention_days
        # the department's quality gate (yumen.connectors._stewardship.QualityGate): reports each
        # new version and may withhold it; None publishes every version unmeasured
        self.gate = gate
        self._lock = threading.Lock()
        self._pinned: Pinned | None = None
        self._withheld: set[str] = set()
        self._checked = float("-inf")  # time.monotonic() of the last check of the source's version

    @property
    def registration(self) -> DatasetRegistration:
        with self._lock:
            return self._pinned.registration if self._pinned else self.base

    def refresh(self) -> DatasetRegistration:
        """Pin the source's current version (snapshotting it when it is new) and return it."""
        return self.pin().registration

    def pin_recent(self, max_age_s: float = 1.0) -> Pinned:
        """The pinned version, checked against the source at most every ``max_age_s`` seconds.

        For many small reads (verification lookups): re-checking the source's version costs
        file-system calls on every read, more than the lookup itself.
        """
        with self._lock:
            if self._pinned is not None and time.monotonic() - self._checked < max_age_s:
                return self._pinned
        return self.pin()

    def pin(self) -> Pinned:
        if getattr(self.source.spec, "pushdown", False):
            return self._pin_pushdown()
        version = self.source.version()
        with self._lock:
            self._checked = time.monotonic()
            if self._pinned is not None and self._pinned.registration.version == version:
                return self._pinned
            if version in self._withheld:
                return self._still_pinned(version)
        path = self.source.snapshot(self.snapshots)
        pinned = Pinned(registration=dataclasses.replace(self.base, version=version), snapshot=path)
        if self.gate is not None and not self.gate.admit(pinned):
            with self._lock:
                self._withheld.add(version)
                kept = self._pinned
            if kept is None or kept.snapshot != path:
                self.gate.discard_snapshot(path)
            return self._still_pinned(version)
        with self._lock:
            self._pinned = pinned
        self._prune(keep=path)
        return pinned

    def _pin_pushdown(self, version: str = "") -> Pinned:
        """Pin a pushdown source by its engine's fingerprint; no rows leave the engine.

        No snapshot exists, so the quality gate (which measures a snapshot) does not run on
        such a dataset, and audit re-execution and verification lookups are not offered for
        it (docs/pushdown.md).
        """
        if not version:
            with self.source.pushdown_engine() as engine:
                version = engine.fingerprint()
        with self._lock:
            self._checked = time.monotonic()
            if self._pinned is None or self._pinned.registration.version != version:
                self._pinned = Pinned(registration=dataclasses.replace(self.base, version=version), snapshot=None,
                                      pushdown=self.source)
            return self._pinned

    def _still_pinned(self, withheld: str) -> Pinned:
        """The version served while ``withheld`` is refused by the department's quality thresholds."""
        with self._lock:
            if self._pinned is not None:
                return self._pinned
        raise YumenError(Code.DEPARTMENT_REFUSED,
                         f"the department withholds version {withheld[:19]}… of dataset {self.base.id}: it fails the "
                         "department's quality thresholds, and no earlier version is published")

    def snapshot_of(self, version: str) -> Path | None:
        """The retained snapshot of ``version``, for an audit re-execution."""
        path = self.snapshots / f"{version.removeprefix('sha256:')}.parquet"
        return path if path.exists() else None

    def _prune(self, *, keep: Path) -> None:
        """Drop snapshots older than the retention period (never the pinned one)."""
        cutoff = time.time() - self.retention_days * 86400
        for p in self.snapshots.glob("*.parquet"):
            if p != keep and p.stat().st_mtime < cutoff:
                if self.gate is not None:
                    self.gate.expire_snapshot(self.base.id, p)  # destroyed, checked, confirmed and signed
                else:
                    p.unlink(missing_ok=True)
                log.info("snapshot %s pruned (older than %s days)", p.name, self.retention_days)


def run_blocks(
    backend: Any, source: bytes, reg: DatasetRegistration, snapshot: Path, k: int, seed: bytes, *,
    params: dict[str, Any], timeout_s: float, memory_mb: int, parallel: int | None = None,
    block_dir: Path | None = None, own: Callable[[Path], None] | None = None,
    wave_slack_s: float = Timing().wave_slack_s,
) -> tuple[list[dict[str, float]], dict[str, int], int, str, str, list[Any]]:
    """Sample-and-aggregate's runs: split ``snapshot`` into ``k`` blocks by privacy unit and
    run the algorithm once per block, each in a fresh sandbox of its own, ``parallel`` at a time.

    ``timeout_s`` is each block's own limit (the job's limit shared out over its waves). No
    two blocks share a sandbox (docs/sandbox.md, "Sample-and-aggregate blocks"); a block
    takes a warm one from the backend's pool when one is ready (already running, its
    libraries imported) and otherwise starts a cold one, never waiting. Wave ``i`` (blocks
    ``i·parallel`` to ``(i+1)·parallel - 1``) starts at ``i · (timeout_s + wave_slack_s)``
    after the block files are written, whatever earlier blocks did, and every block file has
    the modification time 0: a block cannot learn from when it starts how long an earlier
    block ran. Returns the block outputs (a failed block gives ``{FAILED_SHARE: 1}``, others
    their result with ``FAILED_SHARE: 0``), the count of each sandbox status, the CPU time,
    the backend and runtime digest, and the sandbox reports (for the department's own
    logs), in block order.
    """
    from concurrent.futures import ThreadPoolExecutor

    import polars as pl

    from yumen.privacy import partition_blocks
    from yumen.sandbox import SandboxRequest, Status

    workers = parallel or max(1, min(4, os.cpu_count() or 1))

    def request(path: Path | None) -> Any:
        return SandboxRequest(algorithm=source, inputs={reg.id: path} if path else {}, params=params,
                              timeout_s=timeout_s, memory_mb=memory_mb)

    warm_up = getattr(backend, "warm_up", None)
    if callable(warm_up):
        warm_up(request(None))  # the pool of this shape fills while the blocks are written
    # block files go to the job's scratch (destroyed and checked after the job), or a temporary folder
    with tempfile.TemporaryDirectory(prefix="yumen-blocks-") if block_dir is None else _existing(block_dir) as tmp:
        paths: list[Path] = []
        for i, block in enumerate(partition_blocks(pl.scan_parquet(snapshot), reg, k, seed)):
            path = Path(tmp) / f"block-{i}.parquet"
            # read once, right away, then destroyed: not worth compressing
            block.write_parquet(path, compression="uncompressed")
            os.utime(path, (0, 0))  # its times say nothing about when it was written
            if own is not None:
                own(path)  # readable by the job's sandbox user only
            paths.append(path)
        if len(paths) != k:
            raise YumenError(Code.INTERNAL, f"the partition gave {len(paths)} blocks, not {k}")
        period = timeout_s + wave_slack_s
        with ThreadPoolExecutor(max_workers=k, thread_name_prefix="block") as pool:
            origin = time.monotonic()
            futures = []
            for first in range(0, k, workers):
                wave = first // workers
                late = time.monotonic() - (origin + wave * period)
                if late < 0:
                    time.sleep(-late)
                elif wave and late > 0.05:
                    log.warning("wave %d of blocks started %.0f ms late (the machine is overloaded)", wave, late * 1000)
                futures += [pool.submit(backend.run, request(paths[i])) for i in range(first, min(k, first + workers))]
            reports = [f.result() for f in futures]
    outputs: list[dict[str, float]] = []
    statuses: dict[str, int] = {}
    for report in reports:
        statuses[report.status.value] = statuses.get(report.status.value, 0) + 1
        ok = report.status is Status.OK and bool(report.result)
        outputs.append({**(report.result if ok else {}), FAILED_SHARE: 0.0 if ok else 1.0})
    cpu_ms = sum(int(r.usage.cpu_ms) for r in reports)
    last = reports[-1]
    return outputs, statuses, cpu_ms, last.backend, last.runtime_digest, reports


# Asks the broker whether a ticket may start: "" yes, a reason no, None no answer (the link broke).
StartGate = Callable[[Ticket, str], "str | None"]


class _Stoppable:
    """A sandbox backend that starts no run of a job the broker ordered stopped."""

    def __init__(self, backend: Any, job_id: str, stopped: Callable[[str], "threading.Event | None"]) -> None:
        self._backend = backend
        self._job_id = job_id
        self._stopped = stopped
        self.name = getattr(backend, "name", "")

    def run(self, request: Any) -> Any:
        event = self._stopped(self._job_id)
        if event is not None and event.is_set():
            raise JobFailure("killed", "the broker ordered the job stopped before this sandbox started")
        return self._backend.run(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


class _existing:
    """A directory as a context manager that leaves it in place (its owner destroys it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> str:
        return str(self.path)

    def __exit__(self, *_: Any) -> None:
        return None


def _commitment(salt: bytes, exact: Any) -> str:
    return "sha256:" + hashlib.sha256(salt + canonical_json(exact)).hexdigest()


class Executor:
    def __init__(self, config: ConnectorConfig, key: ec.EllipticCurvePrivateKey, broker_cert: x509.Certificate) -> None:
        self.config = config
        self._key = key
        self._broker_cert = broker_cert
        self.state = ConnectorState(config.state_dir / "connector.db")
        from yumen.connectors._destruction import default_scratch_root, sweep_scratch
        from yumen.connectors._stewardship import Stewardship

        # every file a job puts on the host lives under here, and is destroyed after it
        self.scratch_root = config.scratch_dir or default_scratch_root(config.id, config.state_dir)
        # what a crash (kill -9, power loss) left staged: no job runs yet, so none of it is live
        left = sweep_scratch(self.scratch_root)
        if left:
            log.warning("removed the scratch of %d jobs a previous connector process left in %s", len(left),
                        self.scratch_root)
        self.steward = Stewardship(config, key, ledger=self.state)
        self.datasets: dict[str, ServedDataset] = {
            d.registration.id: ServedDataset(d.registration, open_source(d.source), config.state_dir / "snapshots",
                                             config.snapshot_retention_days, gate=self.steward.gate)
            for d in config.datasets
        }
        self._running: set[tuple[str, str]] = set()
        self._stopped: dict[str, threading.Event] = {}  # jobs the broker ordered stopped, while they run
        self._job_backends: dict[str, list[Any]] = {}  # per-job sandbox backends, while the job runs
        self._running_lock = threading.Lock()
        self._sandboxes: dict[str, Any] = {}
        from yumen.connectors._metrics import ConnectorMetrics

        self.metrics = ConnectorMetrics()

    # -- sandboxes are created lazily: a query-only department needs none --------------
    def sandbox(self, required: str = "") -> Any:
        """The configured backend, or a stronger one when the job's policy requires it."""
        from yumen.sandbox import get_backend

        name = stronger(self.config.sandbox, required)
        if name not in self._sandboxes:
            backend = get_backend(name, **self._pool_option(name))
            backend.check()  # raises SANDBOX_UNAVAILABLE saying what is missing
            self._sandboxes[name] = backend
        return self._sandboxes[name]

    def handle(
        self, payload: bytes, signature: bytes, algorithm_source: bytes, he_context: bytes = b"",
        start: "StartGate | None" = None,
    ) -> tuple[bytes, bytes, bytes] | None:
        """Run one ticket; return the signed receipt (payload, signature, ciphertext), or None to ignore.

        Tickets that fail verification are dropped and logged: they did not come from the
        pinned broker, so there is nobody trustworthy to answer. For the algorithm tiers this
        returns no earlier than the job's release time (see :mod:`yumen.connectors._timing`):
        the calling worker is held with the receipt.

        ``start`` asks the broker whether the job may still start, after the department's own
        checks and before any data is read (see :data:`StartGate`); without one (local runs)
        every ticket starts.
        """
        try:
            ticket = Ticket.verify(payload, signature, self._broker_cert)
        except YumenError as e:
            log.warning("ticket rejected: %s", e.message)
            return None
        digest = Ticket.digest_of_payload(payload)
        key = (ticket.job_id, ticket.dataset)
        with self._running_lock:
            if key in self._running:
                return None  # a redelivery while it runs: the receipt will follow
            claimed, stored = self.state.claim(ticket.job_id, ticket.dataset, digest)
            if stored is None and claimed:
                self._running.add(key)
        if stored is not None:
            # executed before: send the same receipt (and ciphertext) again, not before its time
            self._hold_until(self.state.release_ms(ticket.job_id, ticket.dataset) / 1000)
            return stored
        if not claimed:
            # Claimed by an earlier process that died mid-job: the data may have been
            # touched, so the budget stays spent and the job is reported failed, at the
            # time the job would have been released had it run to its deadline.
            started = self.state.claimed_at_ms(ticket.job_id, ticket.dataset) / 1000
            schedule = self._schedule_or_none(ticket)
            fields: dict[str, Any] = {"status": "failed", "error": public_failure("interrupted", algorithm=schedule is not None),
                                      **self._charged(*self._loss_or_pure(ticket))}
            left = self._scratch(ticket).destroy()  # whatever the dead process staged
            return self._finish(ticket, self._receipt(ticket, digest, **fields), None, started=started,
                                schedule=schedule, destroyed=not left)
        try:
            return self._execute(ticket, digest, algorithm_source, he_context, start)
        finally:
            with self._running_lock:
                self._running.discard(key)
                if not any(job == key[0] for job, _ in self._running):
                    self._job_backends.pop(key[0], None)
                self._stopped.pop(ticket.job_id, None)

    def _loss_or_pure(self, ticket: Ticket) -> tuple[Accounting, Fraction]:
        try:
            return self._loss(ticket)
        except YumenError:
            return Accounting.PURE, ticket.epsilon

    def _schedule_or_none(self, ticket: Ticket) -> Schedule | None:
        try:
            return self._schedule(ticket)
        except YumenError:
            return None

    def _schedule(self, ticket: Ticket) -> Schedule | None:
        """The job's release schedule, from its limits only (None for queries)."""
        algo = ticket.work.get("algorithm") or {}
        return schedule_for(ticket.tier, timeout_s=float(algo.get("timeout_s", 60)), blocks=int(algo.get("blocks", 10)),
                            timing=self.config.timing)

    @staticmethod
    def _hold_until(when: float) -> None:
        while True:
            left = when - time.time()
            if left <= 0:
                return
            time.sleep(min(left, 1.0))

    def reexecute(self, payload: bytes, signature: bytes, algorithm_source: bytes) -> tuple[bytes, bytes] | None:
        """Run a logged job again on the version it used and compare output commitments.

        The department consents through ``allow_reexecution``. Nothing is released: the
        report says only whether the recomputed commitment equals the logged one.
        """
        from yumen.identity import sign_payload, verify_payload

        try:
            verify_payload(self._broker_cert, "reexecution", payload, signature)
            ticket = Ticket.from_dict(json.loads(payload))
        except (YumenError, ValueError) as e:
            log.warning("re-execution request rejected: %s", e)
            return None
        report: dict[str, Any] = {"job_id": ticket.job_id, "dataset": ticket.dataset, "department": self.config.department,
                                  "connector": self.config.id, "dataset_version": "", "logged_commitment": "",
                                  "recomputed_commitment": "", "matches": False, "error": ""}
        try:
            report.update(self._reexecute(ticket, algorithm_source))
        except YumenError as e:
            report["error"] = e.message
        except Exception:  # noqa: BLE001 - the auditor gets a safe message, the department the details
            log.exception("re-execution of %s failed", ticket.job_id)
            report["error"] = "internal error at the connector"
        body = canonical_json(report)
        return body, sign_payload(self._key, "reexecution-report", body)

    def _reexecute(self, ticket: Ticket, source: bytes) -> dict[str, Any]:
        if not self.config.allow_reexecution:
            raise YumenError(Code.PERMISSION_DENIED, f"department {self.config.department} does not consent to re-execution")
        stored = self.state.execution(ticket.job_id, ticket.dataset)
        served = self.datasets.get(ticket.dataset)
        if stored is None or served is None:
            raise YumenError(Code.NOT_FOUND, f"this connector never finished job {ticket.job_id} on {ticket.dataset}")
        receipt_payload, salt = stored
        receipt = Receipt.from_dict(json.loads(receipt_payload))
        if receipt.status != "ok" or not salt:
            raise YumenError(Code.INVALID_ARGUMENT, f"job {ticket.job_id} released nothing here ({receipt.status})")
        if getattr(served.source.spec, "pushdown", False):
            # no snapshot: the job can be re-run only while the engine still holds the same rows
            pinned = served._pin_pushdown()
            if pinned.registration.version != receipt.dataset_version or "query" not in ticket.work:
                raise YumenError(Code.NOT_FOUND, f"version {receipt.dataset_version} is no longer in the department's "
                                 "engine (a pushdown source keeps no snapshots)")
        else:
            snapshot = served.snapshot_of(receipt.dataset_version)
            if snapshot is None:
                raise YumenError(Code.NOT_FOUND, f"version {receipt.dataset_version} is no longer kept (snapshot retention)")
            pinned = Pinned(registration=dataclasses.replace(served.base, version=receipt.dataset_version),
                            snapshot=snapshot)
        if "query" in ticket.work:
            fields = self._run_query(pinned, ticket, salt)
        else:
            from yumen.connectors._destruction import JobScratch

            scratch = JobScratch(self.scratch_root, ticket.job_id + "/reexecution", ticket.dataset).create()
            try:
                fields = self._run_algorithm(pinned, ticket, source, salt, self._schedule_or_none(ticket), scratch=scratch)
            finally:
                left = scratch.destroy(engine=self._engine_of(ticket))
                if left:
                    log.error("re-execution of %s: scratch not destroyed: %s", ticket.job_id, ", ".join(left[:20]))
        recomputed = str(fields.get("commitment", ""))
        return {"dataset_version": receipt.dataset_version, "logged_commitment": receipt.commitment,
                "recomputed_commitment": recomputed, "matches": recomputed == receipt.commitment}

    def _receipt(self, ticket: Ticket, digest: str, **fields: Any) -> Receipt:
        # A refusal touches no data: it names the version the ticket was issued for.
        fields.setdefault("dataset_version", ticket.dataset_version)
        return Receipt(
            job_id=ticket.job_id, dataset=ticket.dataset, connector=self.config.id,
            department=self.config.department, ticket_digest=digest, at_ms=int(time.time() * 1000), **fields,
        )

    def _finish(self, ticket: Ticket, receipt: Receipt, salt: bytes | None, ciphertext: bytes = b"", *,
                started: float = 0.0, schedule: Schedule | None = None,
                destroyed: bool | None = None) -> tuple[bytes, bytes, bytes]:
        """Sign, store and (for held tiers) wait for the release time before returning.

        A held receipt carries the release time as its time, so it says nothing about when the
        work really ended; an overrun of the deadline is logged here, for the department.
        """
        release = 0.0
        if schedule is not None:
            finished = time.time()
            release = release_at(started, schedule, finished)
            if release > started + schedule.duration_s:
                log.warning("job %s on %s overran its deadline by %.1f s; released %.0f s late (raise [timing] "
                            "allowance_s)", ticket.job_id, ticket.dataset, finished - started - schedule.duration_s,
                            release - started - schedule.duration_s)
                self.metrics.overruns.inc()
            receipt = dataclasses.replace(receipt, at_ms=int(release * 1000))
        if destroyed is not None:
            # fixed by the job's shape, timed at the receipt's (release) time: see _destruction
            from yumen.connectors._destruction import confirmation

            algo = ticket.work.get("algorithm") or {}
            receipt = dataclasses.replace(receipt, destruction=confirmation(
                ticket.tier, int(algo.get("blocks", 10)), at_ms=receipt.at_ms, verified=destroyed))
        payload, sig = receipt.sign(self._key)
        self.state.finish(ticket.job_id, ticket.dataset, payload, sig, salt, ciphertext, release_ms=int(release * 1000))
        if self._stopped_event(ticket.job_id) is None:  # a stopped job releases nothing: no need to hold
            self._hold_until(release)
        return payload, sig, ciphertext

    def _loss(self, ticket: Ticket) -> tuple[Accounting, Fraction]:
        """The accounting of the ticket's dataset here, and the loss the job may spend in it.

        Pure: the ticket's ε. zCDP: the ρ the broker reserved, which must be the department's
        own accounting and no more than the ticket's ε allows at the department's δ.
        """
        unit = self.datasets[ticket.dataset].base.privacy_unit
        budget = ticket.work.get("budget") or {}
        said = Accounting(budget.get("accounting", "pure")) if budget.get("accounting", "pure") in ("pure", "zcdp") else None
        if said is not unit.accounting:
            raise YumenError(Code.DEPARTMENT_REFUSED, f"the ticket accounts dataset {ticket.dataset} as "
                                                      f"{budget.get('accounting', 'pure')}; this department registered it "
                                                      f"as {unit.accounting.value}")
        if unit.accounting is Accounting.PURE:
            return Accounting.PURE, ticket.epsilon
        try:
            rho = Fraction(str(budget.get("amount", "")))
        except (ValueError, ZeroDivisionError):
            raise YumenError(Code.DEPARTMENT_REFUSED, "the ticket's ρ is not a fraction") from None
        if not 0 < rho <= rho_of_epsilon(ticket.epsilon, unit.delta):
            raise YumenError(Code.DEPARTMENT_REFUSED, f"the ticket's ρ {float(rho):.3g} is more than its ε "
                                                      f"{format_epsilon(ticket.epsilon)} allows at this department's δ")
        return Accounting.ZCDP, rho

    @staticmethod
    def _charged(accounting: Accounting, amount: Fraction) -> dict[str, Fraction]:
        return {"epsilon_charged": amount} if accounting is Accounting.PURE else {"rho_charged": amount}

    def _refusal(self, ticket: Ticket, algorithm_source: bytes) -> str:
        if ticket.connector != self.config.id:
            return f"the ticket is addressed to connector {ticket.connector}"
        if ticket.dataset not in self.datasets:
            return f"this connector does not serve dataset {ticket.dataset}"
        if ticket.expires_at_ms < time.time() * 1000:
            return "the ticket has expired"
        algo = ticket.work.get("algorithm")
        if algo is not None and "sha256:" + hashlib.sha256(algorithm_source).hexdigest() != algo.get("digest"):
            return "the algorithm does not match the digest in the ticket"
        try:
            self._loss(ticket)
        except YumenError as e:
            return e.message
        return self.config.local_policy.refusal(tier=ticket.tier, purpose=ticket.purpose, epsilon=ticket.epsilon)

    def _local_period(self) -> str:
        lp = self.config.local_policy
        return f"{lp.period_days}d:{int(time.time() // 86400) // lp.period_days}"

    def _give_back_local(self, ticket: Ticket) -> None:
        """Return what :meth:`_local_gates` charged to the department's ledger for a job that
        never started."""
        accounting, amount = self._loss(ticket)
        lp = self.config.local_policy
        if accounting is Accounting.PURE:
            self.state.charge(ticket.dataset, self._local_period(), -amount, lp.dataset_epsilon_cap)
        else:
            delta = self.datasets[ticket.dataset].base.privacy_unit.delta
            self.state.charge(ticket.dataset, self._local_period() + "/rho", -amount,
                              rho_of_epsilon(lp.dataset_epsilon_cap, delta))

    # -- stopping a job ---------------------------------------------------------------------
    def stop(self, job_id: str, reason: str) -> bool:
        """Stop a job this connector runs (the broker's order: its operator cancelled it, or it
        overran): no sandbox of it starts from now on, and those running are killed (processes
        and containers found by the job's scratch directory, which each of them mounts). Its
        receipt then reports it failed, and nothing of it is released. False when it is not
        running here."""
        with self._running_lock:
            datasets = [ds for job, ds in self._running if job == job_id]
            if not datasets:
                return False
            stopped = self._stopped.setdefault(job_id, threading.Event())
        stopped.set()
        log.warning("stopping job %s: %s", job_id, reason)

        def sweep() -> None:
            # a sandbox starting while we look is caught by the next pass; the job's own
            # worker ends the sweeps when it returns
            for _ in range(120):
                for ds in datasets:
                    for what in self._scratch_for(job_id, ds).kill_sandboxes(engine=self._any_engine()):
                        log.warning("job %s: killed %s", job_id, what)
                with self._running_lock:
                    backends = list(self._job_backends.get(job_id, ()))
                for job_backend in backends:  # warm sandboxes do not mount the job's scratch
                    for what in job_backend.kill_running():
                        log.warning("job %s: killed %s", job_id, what)
                with self._running_lock:
                    if not any(job == job_id for job, _ in self._running):
                        return
                time.sleep(0.5)

        threading.Thread(target=sweep, name=f"stop-{job_id[:24]}", daemon=True).start()
        return True

    def _raise_if_stopped(self, ticket: Ticket) -> None:
        """A job the broker stopped ends as killed, whatever its sandboxes returned: it releases nothing."""
        event = self._stopped_event(ticket.job_id)
        if event is not None and event.is_set():
            raise JobFailure("killed", "the broker ordered the job stopped")

    def _stopped_event(self, job_id: str) -> threading.Event | None:
        with self._running_lock:
            return self._stopped.get(job_id)

    def _any_engine(self) -> Any:
        for name in ("docker", "gvisor"):
            backend = self._sandboxes.get(name)
            if backend is not None:
                return getattr(backend, "client", None)
        return None

    def _local_gates(self, ticket: Ticket, algorithm_source: bytes) -> str:
        """The department's own checks that need state: sandbox, approvals, then its ε ledger."""
        if "algorithm" in ticket.work:
            required = str(ticket.obligations.get("sandbox", ""))
            try:
                self.sandbox(required)
            except YumenError as e:
                return f"this department cannot provide the {required or self.config.sandbox} sandbox the policy requires: {e.message}"
        if ticket.tier == "approved-algorithm":
            why = self._approval_refusal(ticket, algorithm_source)
            if why:
                return why
        lp = self.config.local_policy
        day = int(time.time() // 86400)
        period = f"{lp.period_days}d:{day // lp.period_days}"
        accounting, amount = self._loss(ticket)
        if accounting is Accounting.PURE:
            left = self.state.charge(ticket.dataset, period, amount, lp.dataset_epsilon_cap)
            if left is not None:
                return (f"the department's own budget for dataset {ticket.dataset} is exhausted: "
                        f"{format_epsilon(left) if left else '0'} of {format_epsilon(lp.dataset_epsilon_cap)} ε left "
                        f"in period {period}")
            return ""
        # zCDP: the department's cap, read as (ε, δ), becomes ρ; its rows are kept apart from ε
        delta = self.datasets[ticket.dataset].base.privacy_unit.delta
        cap = rho_of_epsilon(lp.dataset_epsilon_cap, delta)
        left = self.state.charge(ticket.dataset, period + "/rho", amount, cap)
        if left is not None:
            return (f"the department's own budget for dataset {ticket.dataset} is exhausted: "
                    f"{float(left):.6g} of {float(cap):.6g} ρ left in period {period}")
        return ""

    def _approval_refusal(self, ticket: Ticket, source: bytes) -> str:
        algo = ticket.work.get("algorithm", {})
        digest = algo.get("digest", "")
        record = self.state.approval(digest)
        if record is None:
            self.state.request_approval(digest, source, {
                "job_id": ticket.job_id, "operator": ticket.operator, "license": ticket.license,
                "purpose": ticket.purpose, "dataset": ticket.dataset, "outputs": algo.get("outputs", []),
                "epsilon": format_epsilon(ticket.epsilon),
            })
            return (f"algorithm {digest[:19]}… awaits review by department {self.config.department}; "
                    "it has been queued for approval, resubmit once it is approved")
        if record["status"] == "pending":
            return f"algorithm {digest[:19]}… is still awaiting review by department {self.config.department}"
        if record["status"] == "rejected":
            return f"algorithm {digest[:19]}… was rejected by department {self.config.department}: {record['note']}"
        limits = record["limits"]
        if limits.get("until") and time.time() > float(limits["until"]):
            return f"the department's approval of algorithm {digest[:19]}… has expired"
        if limits.get("max_epsilon") and ticket.epsilon > Fraction(limits["max_epsilon"]):
            return f"the approval of algorithm {digest[:19]}… allows at most ε {limits['max_epsilon']} per job"
        if not self.state.count_approved_run(digest, int(limits.get("max_runs", 0))):
            return f"the approval of algorithm {digest[:19]}… allows {limits.get('max_runs')} runs, all used"
        return ""

    def _execute(self, ticket: Ticket, digest: str, algorithm_source: bytes, he_context: bytes,
                 start: "StartGate | None" = None) -> tuple[bytes, bytes, bytes] | None:
        try:
            schedule = self._schedule(ticket)  # fixed from the job's limits, before any data is read
            reason = self._refusal(ticket, algorithm_source) or self._local_gates(ticket, algorithm_source)
        except YumenError as e:
            schedule, reason = None, e.message + (f" ({e.hint})" if e.hint else "")
        if reason:
            self.metrics.record(dataset=ticket.dataset, tier=ticket.tier, outcome="refused", seconds=0.0)
            log.info("job %s refused locally: %s", ticket.job_id, reason)
            return self._finish(ticket, self._receipt(ticket, digest, status="refused", error=reason), None)
        served = self.datasets[ticket.dataset]
        he_digest = str(ticket.work.get("he_context", ""))
        if he_digest and "sha256:" + hashlib.sha256(he_context).hexdigest() != he_digest:
            reason = "the encryption context does not match the digest in the ticket"
            return self._finish(ticket, self._receipt(ticket, digest, status="refused", error=reason), None)
        answer = start(ticket, digest) if start is not None else ""
        if answer is None or answer:
            self._give_back_local(ticket)  # nothing was read: the department's own ledger too
            if answer is None:  # no answer (the link broke): the redelivered ticket asks again
                self.state.unclaim(ticket.job_id, ticket.dataset)
                return None
            log.info("job %s on %s not started: %s", ticket.job_id, ticket.dataset, answer)
            return self._finish(ticket, self._receipt(ticket, digest, status="refused",
                                                      error=f"the broker withdrew the ticket: {answer}"), None)
        started = time.time()
        salt = os.urandom(32)
        ciphertext = b""
        is_algorithm = "algorithm" in ticket.work
        scratch = self._scratch(ticket, owner=self._sandbox_owner(ticket) if is_algorithm else None)
        try:
            pinned = served.pin()
            if is_algorithm:
                fields = self._run_algorithm(pinned, ticket, algorithm_source, salt, schedule, scratch=scratch.create())
            else:
                cpu = time.process_time()
                fields = self._run_query(pinned, ticket, salt)
                fields.setdefault("metering", {}).update(
                    query_metering(time.process_time() - cpu, self._published_rows(pinned)))
            if he_digest and fields.get("status") == "ok":
                fields, ciphertext = self._encrypt(fields, he_context)
        except Exception as e:  # noqa: BLE001 - every failure after data was read gets a fixed public message
            failure = e if isinstance(e, JobFailure) else JobFailure(
                "query" if not is_algorithm and isinstance(e, YumenError) else "internal",
                e.message if isinstance(e, YumenError) else f"{type(e).__name__}: {e}")
            if not isinstance(e, YumenError | JobFailure):
                log.exception("job %s failed with an internal error", ticket.job_id)
            log.info("job %s on %s failed (%s): %s", ticket.job_id, ticket.dataset, failure.kind, failure.detail)
            self.state.record_failure(ticket.job_id, ticket.dataset, kind=failure.kind, detail=failure.detail,
                                      algorithm_digest=str((ticket.work.get("algorithm") or {}).get("digest", "")))
            fields = {**failure.fields, "status": "failed", **self._charged(*self._loss(ticket)),
                      "error": public_failure(failure.kind, algorithm=is_algorithm)}
        left = scratch.destroy(engine=self._engine_of(ticket))
        if left:
            log.error("job %s on %s: scratch not destroyed, still present: %s", ticket.job_id, ticket.dataset,
                      ", ".join(left[:20]))
        elapsed = time.time() - started
        self.metrics.record(dataset=ticket.dataset, tier=ticket.tier, outcome=str(fields.get("status")), seconds=elapsed)
        metering = dict(fields.pop("metering", {}))
        if schedule is None:
            metering["wall_ms"] = int(elapsed * 1000)
        else:
            # An algorithm controls its own running time: its wall and CPU time would be a side
            # channel, so the receipt meters only what its limits fixed in advance.
            metering["held_ms"] = int(schedule.duration_s * 1000)
        log.info("job %s on %s took %d ms", ticket.job_id, ticket.dataset, int(elapsed * 1000))
        version = fields.pop("dataset_version", served.registration.version)
        receipt = self._receipt(ticket, digest, metering=metering, dataset_version=version, **fields)
        return self._finish(ticket, receipt, salt, ciphertext, started=started, schedule=schedule, destroyed=not left)

    def _scratch(self, ticket: Ticket, *, owner: int | None = None) -> Any:
        return self._scratch_for(ticket.job_id, ticket.dataset, owner=owner)

    def _scratch_for(self, job_id: str, dataset: str, *, owner: int | None = None) -> Any:
        from yumen.connectors._destruction import JobScratch

        return JobScratch(self.scratch_root, job_id, dataset, owner=owner)

    def _sandbox_owner(self, ticket: Ticket) -> int | None:
        """The user a job's sandboxes run as, who alone may read what is staged for them: a uid
        of the job's own under bubblewrap (the backend is told to use it), 65534 in a container;
        None when the connector is not root (its sandboxes then run as its own user)."""
        if os.geteuid() != 0:
            return None
        name = stronger(self.config.sandbox, str(ticket.obligations.get("sandbox", "")))
        if name == "bwrap":
            import secrets

            return _JOB_UID_BASE + secrets.randbelow(_JOB_UID_COUNT)
        return _CONTAINER_UID

    def _engine_of(self, ticket: Ticket) -> Any:
        """The Docker client to ask for leftover containers, when the job ran under Docker or gVisor."""
        if "algorithm" not in ticket.work:
            return None
        for name in ("docker", "gvisor"):
            backend = self._sandboxes.get(name)
            if backend is not None and (self.config.sandbox == name or ticket.obligations.get("sandbox") == name):
                return getattr(backend, "client", None)
        return None

    def _job_backend(self, backend: Any, scratch: Any) -> Any:
        """The backend for one job, staging whatever it stages in the job's scratch."""
        from yumen.sandbox import BACKENDS, get_backend

        name = getattr(backend, "name", "")
        if scratch is None or name not in BACKENDS:
            return backend
        pool = self._pool_option(name)
        if name == "bwrap" and scratch.owner is not None and not pool["pool_size"]:
            # every sandbox of the job runs as the uid its staged files belong to (a warm
            # sandbox has a uid of its own and gets a copy of each input in its private folder)
            return get_backend(name, staging_dir=scratch.sandbox, uid_base=scratch.owner, uid_count=1)
        return get_backend(name, staging_dir=scratch.sandbox, **pool)

    def _pool_option(self, name: str) -> dict[str, int]:
        """Warm sandboxes (the pool itself is shared by the process): at least one per block of a wave."""
        size = self.config.sandbox_pool
        return {"pool_size": max(size, self.config.timing.parallel) if size else 0}

    @staticmethod
    def _encrypt(fields: dict[str, Any], he_context: bytes) -> tuple[dict[str, Any], bytes]:
        """Encrypt the released values under the operator's key; the receipt keeps only their layout."""
        from yumen.privacy import he_encrypt

        values = fields["values"]
        ciphertext = he_encrypt(he_context, [v.value for v in values])
        hidden = tuple(ReleasedValue(name=v.name, group=v.group, value=0.0, noise_scale=v.noise_scale, ci95=v.ci95)
                       for v in values)
        return {**fields, "values": hidden, "ciphertext_digest": "sha256:" + hashlib.sha256(ciphertext).hexdigest()}, ciphertext

    def _published_rows(self, pinned: Pinned) -> float | None:
        """The version's row count as its quality report released it (DP noise), if it did."""
        from yumen.connectors._quality import QualityReport

        reg = pinned.registration
        stored = self.steward.published_report(reg.id, reg.version)
        if stored is None:
            return None
        rows = (QualityReport.from_payload(stored[0]).body.get("table") or {}).get("rows")
        return None if rows is None else float(rows)

    def _run_query(self, pinned: Pinned, ticket: Ticket, salt: bytes) -> dict[str, Any]:
        """Answer the ticket's query on the pinned version, in the release shape the broker chose.

        ``partial == "sum+count"``: a mean combined across departments (or under encryption)
        is released as its parts, each with half the ε; whoever combines them divides.
        ``counts``: a minimum group size applies, so every group's noisy row count is
        released beside the statistic for the broker to suppress small groups by. Count and
        histogram values are counts already, and mean and variance measure one (releasing it
        is free); a sum or a quantile spends half its ε on a count.
        """
        if pinned.pushdown is not None:
            # The engine computes the aggregates in one snapshot of the source, and the version
            # the receipt names is its fingerprint in that same snapshot.
            with pinned.pushdown.pushdown_engine() as engine:
                version = engine.fingerprint()
                if version != pinned.registration.version:
                    pinned = self.datasets[ticket.dataset]._pin_pushdown(version)
                fields = self._answer(engine, pinned.registration, ticket, salt)
            return {**fields, "dataset_version": version}
        return self._answer(pinned.frame(), pinned.registration, ticket, salt)

    def _answer(self, frame: Any, reg: DatasetRegistration, ticket: Ticket, salt: bytes) -> dict[str, Any]:
        """The ticket's query on ``frame`` (a bounded frame, or a pushdown engine)."""
        from yumen.jobs import Aggregate
        from yumen.privacy import QuerySpec, dp_query

        _, loss = self._loss(ticket)
        query = Query.from_dict(ticket.work["query"])
        grouped = bool(query.group_by) or query.aggregate is Aggregate.HISTOGRAM
        counts = bool(ticket.work.get("counts")) and grouped
        split = ticket.work.get("partial") == "sum+count" or (
            counts and query.aggregate in (Aggregate.SUM, Aggregate.QUANTILE))
        if not split:
            release = dp_query(frame, reg, QuerySpec.from_query(query), loss)
            out = self._released(release, query.aggregate.value, salt, grouped=grouped)
            if counts and query.aggregate in (Aggregate.MEAN, Aggregate.VARIANCE):
                out["values"] = out["values"] + self._count_values(release)
            return out
        main = Aggregate.SUM if query.aggregate is Aggregate.MEAN else query.aggregate
        half = loss / 2
        parts = []
        for agg in (main, Aggregate.COUNT):
            # The count is of the rows the statistic used (the column present), not of all
            # rows: whoever divides a sum by it must divide by the number of values summed.
            q = dataclasses.replace(query, aggregate=agg, quantile=query.quantile if agg is Aggregate.QUANTILE else None)
            parts.append(self._released(dp_query(frame, reg, QuerySpec.from_query(q), half),
                                        agg.value, salt, grouped=bool(query.group_by)))
        both = dict(parts[0])
        both["values"] = parts[0]["values"] + parts[1]["values"]
        for key in ("epsilon_charged", "rho_charged"):
            if key in parts[0]:
                both[key] = parts[0][key] + parts[1][key]
        both["mechanism_params"] = {"parts": [parts[0]["mechanism_params"], parts[1]["mechanism_params"]]}
        both["commitment"] = _commitment(salt, [parts[0]["commitment"], parts[1]["commitment"]])
        return both

    @staticmethod
    def _count_values(release: Any) -> tuple[ReleasedValue, ...]:
        """The noisy counts a mean or variance measured, as released "count" values."""
        count = next(c for c in release.components if c.name == "count")
        return tuple(ReleasedValue(name="count", group=key, value=float(value), noise_scale=float(count.scale),
                                   ci95=float(release.count_accuracy)) for key, value in release.counts.items())

    def _run_algorithm(self, pinned: Pinned, ticket: Ticket, source: bytes, salt: bytes,
                       schedule: Schedule | None = None, *, scratch: Any = None) -> dict[str, Any]:
        """Approved code runs once on the whole dataset; custom code runs sample-and-aggregate.

        ``schedule`` gives each sandbox run its time limit (the job's, shared out over the waves
        of blocks); without one (an audit re-execution) the job's own limit applies per run.
        """
        from yumen.privacy import aggregate_blocks, release_outputs
        from yumen.sandbox import SandboxRequest, Status

        if pinned.snapshot is None:
            raise YumenError(Code.DEPARTMENT_REFUSED, f"dataset {pinned.registration.id} is served by pushdown; "
                             "algorithms need a snapshot of its rows, which this connector does not take")
        algo = ticket.work["algorithm"]
        if "sha256:" + hashlib.sha256(source).hexdigest() != algo["digest"]:
            raise YumenError(Code.VERIFICATION_FAILED, "the algorithm does not match the digest in the ticket")
        ranges = [OutputRange(name=o["name"], lower=float(o["lower"]), upper=float(o["upper"])) for o in algo["outputs"]]
        shared = self.sandbox(str(ticket.obligations.get("sandbox", "")))
        own = self._job_backend(shared, scratch)
        if own is not shared and callable(getattr(own, "kill_running", None)):
            with self._running_lock:  # a stop order kills the warm sandboxes of this job's own backend
                self._job_backends.setdefault(ticket.job_id, []).append(own)
        backend = _Stoppable(own, ticket.job_id, self._stopped_event)
        reg, snapshot = pinned.registration, pinned.snapshot
        if scratch is not None and ticket.tier == "approved-algorithm":
            snapshot = scratch.stage_input(snapshot)  # the sandbox reads this, inside the job's scratch
        run_timeout = schedule.run_timeout_s if schedule is not None else float(algo.get("timeout_s", 60))
        accounting, loss = self._loss(ticket)
        memory_mb = int(algo.get("memory_mb", 512))

        if ticket.tier == "approved-algorithm":
            report = backend.run(SandboxRequest(algorithm=source, inputs={reg.id: snapshot}, params=algo.get("params", {}),
                                                timeout_s=run_timeout, memory_mb=memory_mb))
            self._keep_logs(ticket, report, "run")
            self._raise_if_stopped(ticket)
            common = {"algorithm_digest": algo["digest"], "backend": report.backend,
                      "runtime_digest": report.runtime_digest, "metering": {"sandbox_runs": 1}}
            if report.status is not Status.OK or report.result is None:
                kind = report.status.value if report.status is not Status.OK else "invalid-output"
                raise JobFailure(kind, f"sandbox ended {report.status.value}: {report.error}", **common)
            try:
                release = release_outputs(report.result, ranges, loss, accounting=accounting)
            except YumenError as e:
                raise JobFailure("invalid-output", e.message, **common) from None
            return {**common, **self._released(release, "", salt, grouped=False)}
        # Custom code: GUPT-style sample-and-aggregate. A block that fails is not an error the
        # operator sees (that would leak which block failed): its outputs count as the range's
        # midpoint inside aggregate_blocks, and it adds to the noisy failed share.
        k = int(algo.get("blocks", 10))
        seed = hashlib.blake2b(b"yumen-blocks", key=salt[:32]).digest()
        outputs, statuses, cpu_ms, backend_name, runtime, reports = run_blocks(
            backend, source, reg, snapshot, k, seed, params=algo.get("params", {}), timeout_s=run_timeout,
            memory_mb=memory_mb, parallel=self.config.timing.parallel, wave_slack_s=self.config.timing.wave_slack_s,
            block_dir=scratch.blocks if scratch is not None else None, own=scratch.own if scratch is not None else None,
        )
        for i, block_report in enumerate(reports):
            self._keep_logs(ticket, block_report, f"block-{i}")
        self._raise_if_stopped(ticket)
        # Whether the code failed is itself an output of untrusted code on private data, so
        # it is released the same way: the share of failed blocks, averaged and noised with
        # the other outputs (one person changes one block, so its sensitivity is 1/k).
        release = aggregate_blocks(outputs, [*ranges, OutputRange(name=FAILED_SHARE, lower=0.0, upper=1.0)], loss,
                                   accounting=accounting)
        # How many blocks failed exactly, and how long they ran, only the department's log sees.
        log.info("job %s: %d blocks, statuses %s, %d ms CPU", ticket.job_id, k, statuses, cpu_ms)
        common = {"algorithm_digest": algo["digest"], "backend": backend_name, "runtime_digest": runtime,
                  "metering": {"sandbox_runs": k}}
        # Reported as a failure only when the noisy share is above one half by more than the
        # noise reaches with probability 1e-4 (Laplace tail: scale · ln(1 / 2e-4)): a working
        # algorithm is then almost never misreported, whatever k. With few blocks a broken one
        # may go unreported; its outputs are then range midpoints plus noise.
        failed_share = release.values[FAILED_SHARE]
        if failed_share > 0.5 + release.noise_scale[FAILED_SHARE] * math.log(5000):
            return {**common, "status": "failed", **self._charged(accounting, release.epsilon),
                    "error": f"the algorithm failed in most blocks (noisy share {failed_share:.2f}); "
                             "try it on mock data first with `yumen dev run`"}
        return {**common, **self._released(release, "", salt, grouped=False)}

    def _keep_logs(self, ticket: Ticket, report: Any, name: str) -> None:
        """Keep the algorithm's captured (capped) stdout and stderr for the department only.

        They may contain data the code printed, so they never go into a receipt; the
        department reads them under ``state_dir/job-logs/<job>/<dataset>/``.
        """
        folder = self.config.state_dir / "job-logs" / ticket.job_id / ticket.dataset
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (folder / f"{name}.stdout").write_bytes(report.stdout)
        (folder / f"{name}.stderr").write_bytes(report.stderr)
        (folder / f"{name}.json").write_text(json.dumps(report.to_json(), indent=2))

    def _released(self, release: Any, statistic: str, salt: bytes, *, grouped: bool) -> dict[str, Any]:
        values = []
        for key, value in release.values.items():
            name, group = (statistic, key if grouped else "") if statistic else (key, "")
            values.append(ReleasedValue(
                name=name, group=group, value=float(value),
                noise_scale=float(release.noise_scale[key]), ci95=float(release.accuracy[key]),
            ))
        public = release.to_dict()
        return {
            "status": "ok",
            "mechanism": release.mechanism,
            "mechanism_params": {"components": public["components"], "confidence": public["confidence"]},
            **self._charged(Accounting(release.accounting), release.epsilon),
            "values": tuple(values),
            "commitment": _commitment(salt, dict(release.exact)),
        }


def query_metering(cpu_s: float, published_rows: float | None) -> dict[str, int]:
    """What a query's charge is metered by (docs/billing.md): the connector's CPU time while it
    ran (the whole process: work of jobs running beside it is counted too) and the rows scanned.

    The rows are not the snapshot's exact size, which is a function of every person in it: they
    are the row count the version's quality report already released with DP noise (so metering
    them costs no further privacy loss), rounded up to whole thousands. A version whose report
    released no noisy figures meters no rows. The operator already sees a query's latency; an
    algorithm's receipt carries neither (its time is a channel, docs/privacy.md) and is metered
    by its limits."""
    import math

    out = {"cpu_ms": int(cpu_s * 1000)}
    if published_rows is not None:
        out["rows_scanned"] = math.ceil(max(float(published_rows), 0.0) / 1000) * 1000
    return out
