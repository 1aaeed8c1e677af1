"""What the broker writes to the transparency log, and when.

One method per entry type, each building the entry from the broker's own records so
that no call site assembles log fields by hand. Floats never enter the log: noise
scales and other real parameters are written as decimal strings of their ``repr``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yumen.audit import (
    DatasetRegistered,
    JobDecided,
    JobExecuted,
    JobReleased,
    PolicyChanged,
    TransparencyLog,
    SQLiteLogStorage,
    generate_log_key,
    load_log_key,
    save_log_key,
)
from yumen.catalog import DatasetRegistration
from yumen.identity import Identity
from yumen.jobs import JobRequest, format_epsilon
from yumen.policy import Decision, PolicyEngine, Reservation
from yumen.tickets import Receipt

if TYPE_CHECKING:
    from yumen.broker._store import Store

log = logging.getLogger(__name__)

__all__ = ["BrokerAudit", "LogSummary", "open_log"]


def open_log(storage: Path | Any, *, key_path: Path, origin: str) -> TransparencyLog:
    """Open the broker's log (a SQLite database path, or a log storage such as
    ``PostgresLogStorage``); create the Ed25519 log key on first start."""
    if key_path.exists():
        key = load_log_key(key_path)
    else:
        key = generate_log_key()
        key_path.parent.mkdir(parents=True, exist_ok=True)
        save_log_key(key, key_path)
        log.info("created log key %s", key_path)
    if isinstance(storage, (str, Path)):
        storage = SQLiteLogStorage(storage)
    return TransparencyLog(storage, origin=origin, signing_key=key)


def _no_floats(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _no_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_floats(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogSummary:
    """What start-up needs to know of the log, gathered in one pass over it."""

    latest_policy: str                       # version named by the last policy_changed ("" when none)
    allowed: frozenset[str]                  # jobs with an allowing decision
    cancelled: frozenset[str]                # jobs with a cancellation
    executed: frozenset[tuple[str, str]]     # (job, dataset) with a job_executed entry


class BrokerAudit:
    """Builds log entries from the broker's records and appends them.

    Inside :meth:`joined` every append of the calling thread goes into the caller's open
    store transaction (``TransparencyLog.append_within``), so the entry commits together
    with the state change it records; elsewhere appends are group-committed as usual.
    """

    def __init__(self, tlog: TransparencyLog, broker_id: str) -> None:
        self.tlog = tlog
        self.broker_id = broker_id
        self._local = threading.local()
        # (dataset, version) -> the version's quality report as logged (digest, loss, verdict); see _stewardship
        self.quality_of: Any = None

    @contextlib.contextmanager
    def joined(self, conn: Any) -> Iterator[None]:
        self._local.conn = conn
        try:
            yield
        finally:
            self._local.conn = None

    def _append(self, entry: Any) -> int:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return self.tlog.append_within(conn, [entry])[0]
        return self.tlog.append(entry)

    def billing(self, entry: Any) -> int:
        """Append a ``catalogue_changed`` or ``charge`` entry, which yumen.broker._billing builds
        from the catalogue and the job's records (see that module)."""
        from yumen.audit import CatalogueChanged, ChargeRecorded

        if not isinstance(entry, (CatalogueChanged, ChargeRecorded)):
            from yumen.errors import Code, YumenError

            raise YumenError(Code.INTERNAL, f"not a billing entry: {type(entry).__name__}")
        return self._append(entry)

    def dataset_registered(self, reg: DatasetRegistration, connector: Identity, *, certificate_pem: str = "") -> int:
        """Log a version's registration; ``certificate_pem`` carries the connector's certificate the
        first time the log meets it, so auditors check its signatures offline (audit/_statements)."""
        details: dict[str, Any] = {"connector": connector.name, "title": reg.title,
                                   "privacy_unit": reg.privacy_unit.to_dict()}
        if certificate_pem:
            details["connector_certificate_pem"] = certificate_pem
            details["connector_certificate"] = connector.fingerprint
        quality = self.quality_of(reg.id, reg.version) if self.quality_of is not None else {}
        if quality:
            details["quality"] = quality
        return self._append(DatasetRegistered(
            dataset_id=reg.id, version=reg.version, department=reg.department,
            registration_digest=reg.digest(), level=reg.level.value,
            # the privacy unit says whose budget the dataset spends (namespace, accounting):
            # the auditor's replay needs it to rebuild the ledger
            details=details,
        ))

    def policy_changed(self, engine: PolicyEngine, *, previous: str = "", changed_by: str = "broker") -> int:
        return self._append(PolicyChanged(
            policy_version=engine.version, previous_version=previous, changed_by=changed_by,
            details=engine.bundle.to_dict(),
        ))

    def job_decided(self, request: JobRequest, operator: Identity, reg: DatasetRegistration, decision: Decision,
                    period: str = "") -> int:
        return self._append(JobDecided(
            job_id=request.job_id, allowed=decision.allowed, policy_version=decision.policy_version,
            matched_rule=decision.rule,
            obligations=decision.obligations.to_dict() if decision.obligations else {},
            operator=operator.name, license_id=operator.license, datasets=(reg.id,),
            tier=request.tier.value, purpose=request.purpose.value,
            epsilon=format_epsilon(request.epsilon), reason=decision.reason,
            request_digest=request.digest(),
            details={"department": reg.department, "level": reg.level.value, "dataset_version": reg.version,
                     "gate": decision.gate, "price": str(decision.price), "price_class": reg.price_class,
                     "period": period, "he": bool(request.he_context)},
        ))

    @staticmethod
    def _per_dataset(decisions: list[tuple[DatasetRegistration, Decision]],
                     reservations: list[Reservation]) -> dict[str, Any]:
        """Each dataset's decision and budget: rule, obligations, price, and exactly what the
        reservation charges (or would have charged) to which account."""
        return {
            r.id: {"department": r.department, "level": r.level.value, "dataset_version": r.version,
                   "rule": d.rule, "obligations": d.obligations.to_dict() if d.obligations else {},
                   "price": str(d.price), "price_class": r.price_class, "period": res.period,
                   "namespace": res.namespace, "accounting": res.accounting.value,
                   "delta": f"{res.delta.numerator}/{res.delta.denominator}" if res.delta else "",
                   "amount": f"{res.amount.numerator}/{res.amount.denominator}",
                   "charges": [c.to_list() for c in res.charges()]}
            for (r, d), res in zip(decisions, reservations)
        }

    def job_allowed(self, request: JobRequest, operator: Identity, decisions: list[tuple[DatasetRegistration, Decision]],
                    reservations: list[Reservation]) -> int:
        """One entry for an allowed job, covering every dataset it names (one decision each)."""
        reg0, dec0 = decisions[0]
        return self._append(JobDecided(
            job_id=request.job_id, allowed=True, policy_version=dec0.policy_version,
            matched_rule=dec0.rule, obligations=dec0.obligations.to_dict() if dec0.obligations else {},
            operator=operator.name, license_id=operator.license, datasets=tuple(r.id for r, _ in decisions),
            tier=request.tier.value, purpose=request.purpose.value,
            epsilon=format_epsilon(request.epsilon), request_digest=request.digest(),
            details={
                "per_dataset": self._per_dataset(decisions, reservations),
                "price": str(sum((d.price for _, d in decisions), Decimal(0))),
                "he": bool(request.he_context),
            },
        ))

    def job_over_budget(self, request: JobRequest, operator: Identity,
                        decisions: list[tuple[DatasetRegistration, Decision]], reservations: list[Reservation],
                        reason: str) -> int:
        """A job the policy allowed but the budget refused: which accounts it would have charged."""
        reg0, dec0 = decisions[0]
        return self._append(JobDecided(
            job_id=request.job_id, allowed=False, policy_version=dec0.policy_version,
            matched_rule=dec0.rule, obligations=dec0.obligations.to_dict() if dec0.obligations else {},
            operator=operator.name, license_id=operator.license, datasets=tuple(r.id for r, _ in decisions),
            tier=request.tier.value, purpose=request.purpose.value,
            epsilon=format_epsilon(request.epsilon), reason=reason, request_digest=request.digest(),
            details={"gate": "budget", "per_dataset": self._per_dataset(decisions, reservations),
                     "he": bool(request.he_context)},
        ))

    def job_cancelled(self, job: Any, reason: str, *, gate: str = "license", refunded: list[str] | None = None,
                      by: str = "", expires: dict[str, int] | None = None) -> int:
        """A second decision on an allowed job: it stops, and nothing of it is released.

        ``gate`` says why: ``license`` (it lapsed while the job was queued; nothing had started),
        ``operator`` (its operator cancelled it) or ``expired`` (a ticket expired before its
        department started it, or a started one overran the job's limits). ``refunded`` names
        the datasets whose charges were given back (none had started); the others keep theirs.
        """
        req, dec = job.request, job.decision
        details: dict[str, Any] = {"cancelled": True, "gate": gate}
        if refunded is not None:
            details["refunded"] = sorted(refunded)
        if by:
            details["cancelled_by"] = by
        if expires:
            details["expires_ms"] = {ds: int(ms) for ds, ms in sorted(expires.items())}
        return self._append(JobDecided(
            job_id=job.job_id, allowed=False, policy_version=dec["policy_version"],
            matched_rule=dec.get("rule", ""), obligations=dec.get("obligations") or {},
            operator=job.operator, license_id=job.license, datasets=tuple(req["datasets"]),
            tier=req["tier"], purpose=req["purpose"], epsilon=req["epsilon"], reason=reason,
            request_digest=job.request_digest, details=details,
        ))

    def license_changed(self, record: dict[str, Any], action: str, changed_by: str, reason: str = "") -> int:
        from yumen.audit import LicenseChanged
        from yumen.canonical import digest_of

        return self._append(LicenseChanged(
            license_id=record["id"], operator=record["organization"], action=action,
            license_digest=digest_of(record), changed_by=changed_by,
            details={"license": record, "reason": reason},
        ))

    def job_executed(self, receipt: Receipt, payload: bytes, signature: bytes, connector: Identity) -> int:
        return self._append(JobExecuted(
            job_id=receipt.job_id, connector=connector.name, dataset_id=receipt.dataset,
            dataset_version=receipt.dataset_version or "sha256:" + "0" * 64,
            algorithm_digest=receipt.algorithm_digest, sandbox_backend=receipt.backend,
            runtime_digest=receipt.runtime_digest, mechanism=receipt.mechanism or "none",
            mechanism_params=_no_floats(receipt.mechanism_params),
            epsilon_charged=format_epsilon(receipt.epsilon_charged) if receipt.epsilon_charged else "0",
            output_commitment=receipt.commitment or "sha256:" + "0" * 64,
            metering=_no_floats(receipt.metering),
            receipt_signature=base64.b64encode(signature).decode(),
            details={
                "status": receipt.status,
                "error": receipt.error,
                "rho_charged": f"{receipt.rho_charged.numerator}/{receipt.rho_charged.denominator}",
                "receipt": base64.b64encode(payload).decode(),
                "connector_certificate": connector.fingerprint,
            },
        ))

    def job_released(self, job: Any, result: dict[str, Any]) -> int:
        return self._append(JobReleased(
            job_id=job.job_id, result_digest=result["result_digest"],
            bill=dict(result.get("bill", {}), operator=job.operator, license=job.license),
            details={"operator": job.operator, "epsilon_spent": result["epsilon_spent"], "loss": result.get("loss", {}),
                     "ciphertext_digest": result.get("ciphertext_digest", "")},
        ))

    def scan(self, size: int | None = None) -> LogSummary:
        """One pass over the log for everything recovery and start-up compare with the store.

        ``size``: how far to read, when the caller learnt it from the storage itself (under
        the log's write lock) rather than from this process's view of the log."""
        latest = ""
        allowed: set[str] = set()
        cancelled: set[str] = set()
        executed: set[tuple[str, str]] = set()
        for _, entry in self.tlog.stored_entries(0, self.tlog.size if size is None else size):
            if isinstance(entry, PolicyChanged):
                latest = entry.policy_version
            elif isinstance(entry, JobDecided) and entry.allowed:
                allowed.add(entry.job_id)
            elif isinstance(entry, JobDecided) and entry.details.get("cancelled"):
                cancelled.add(entry.job_id)
            elif isinstance(entry, JobExecuted):
                executed.add((entry.job_id, entry.dataset_id))
        return LogSummary(latest_policy=latest, allowed=frozenset(allowed), cancelled=frozenset(cancelled),
                          executed=frozenset(executed))

    def recover_receipts(self, store: Store, summary: LogSummary) -> list[tuple[Any, Receipt, int]]:
        """Log receipts the store holds but the log lacks; return them with their jobs."""
        import json

        from yumen.identity import Role
        from yumen.jobs import JobState

        out = []
        for job in store.jobs_in_state(*JobState):
            for dataset, part in store.partials(job.job_id).items():
                if (job.job_id, dataset) in summary.executed:
                    continue
                payload = part["payload"].encode()
                receipt = Receipt.from_dict(json.loads(payload))
                who = Identity(role=Role.CONNECTOR, name=receipt.connector, department=receipt.department)
                index = self.job_executed(receipt, payload, bytes.fromhex(part["signature"]), who)
                out.append((job, receipt, index))
        if out:
            log.warning("recovered %d receipts missing from the log", len(out))
        return out

    def recover(self, store: Store, summary: LogSummary) -> None:
        """Append ``job_decided`` for jobs the store holds but the log lacks (crash recovery)."""
        from yumen.jobs import JobState  # local: avoids a cycle at import time

        missing = [j for j in store.jobs_in_state(*JobState) if j.job_id not in summary.allowed]
        reserved: dict[str, dict[str, tuple[str, tuple[Any, ...]]]] = {}
        for job_id, dataset, _lic, period, _eps, _released, charges in store.iter_reservations():
            reserved.setdefault(job_id, {})[dataset] = (period, charges)
        for job in missing:
            req, dec = job.request, job.decision
            per = {}
            for ds, d in (dec.get("per_dataset") or {}).items():
                period, charges = reserved.get(job.job_id, {}).get(ds, ("", ()))
                budget = d.get("budget") or {}
                per[ds] = {k: v for k, v in d.items() if k != "budget"}
                per[ds].update(period=period, charges=[c.to_list() for c in charges],
                               **{k: budget.get(k, "") for k in ("namespace", "accounting", "delta", "amount")})
            self._append(JobDecided(
                job_id=job.job_id, allowed=True, policy_version=dec["policy_version"],
                matched_rule=dec.get("rule", ""), obligations=dec.get("obligations") or {},
                operator=job.operator, license_id=job.license, datasets=tuple(req["datasets"]),
                tier=req["tier"], purpose=req["purpose"], epsilon=req["epsilon"],
                request_digest=job.request_digest, details={"recovered": True, "per_dataset": per},
            ))
        if missing:
            log.warning("recovered %d job decisions missing from the log", len(missing))
        for job in store.jobs_in_state(JobState.CANCELLED):
            if job.job_id not in summary.cancelled:
                self.job_cancelled(job, job.message.removeprefix("cancelled before it started: "))
