"""Executing one broker-signed ticket next to the data, and signing the receipt.

Order matters: the ticket's signature (against the pinned broker key), audience, expiry
and replay are checked, then the department's own policy, and only then is the data
touched. Whatever happens after that, a receipt is produced: "ok" with released values,
"failed" with a short safe error, or "refused" before any data was read.

Nothing in a receipt is a raw row or a pre-noise value: values come from
``DPRelease.to_dict()``, and the pre-noise output is present only as a salted SHA-256
commitment whose salt stays in the connector's state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from yumen.canonical import canonical_json
from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError
from yumen.jobs import OutputRange, Query
from yumen.tickets import Receipt, ReleasedValue, Ticket

from yumen.connectors._config import ConnectorConfig
from yumen.connectors._sources import DataSource, open_source
from yumen.connectors._state import ConnectorState

log = logging.getLogger(__name__)

__all__ = ["Executor", "ServedDataset"]


class ServedDataset:
    """A configured dataset with its source and its current version digest."""

    def __init__(self, registration: DatasetRegistration, source: DataSource) -> None:
        self.base = registration
        self.source = source
        self._lock = threading.Lock()
        self._registration = registration

    @property
    def registration(self) -> DatasetRegistration:
        with self._lock:
            return self._registration

    def refresh(self) -> DatasetRegistration:
        """Recompute the version digest; a changed source yields a new registration version."""
        import dataclasses

        version = self.source.version()
        with self._lock:
            if self._registration.version != version:
                self._registration = dataclasses.replace(self.base, version=version)
            return self._registration


def _commitment(salt: bytes, exact: Any) -> str:
    return "sha256:" + hashlib.sha256(salt + canonical_json(exact)).hexdigest()


class Executor:
    def __init__(self, config: ConnectorConfig, key: ec.EllipticCurvePrivateKey, broker_cert: x509.Certificate) -> None:
        self.config = config
        self._key = key
        self._broker_cert = broker_cert
        self.state = ConnectorState(config.state_dir / "connector.db")
        self.datasets: dict[str, ServedDataset] = {
            d.registration.id: ServedDataset(d.registration, open_source(d.source)) for d in config.datasets
        }
        self._running: set[tuple[str, str]] = set()
        self._running_lock = threading.Lock()
        self._sandbox = None
        self.metrics = {"jobs_run": 0, "jobs_refused": 0, "jobs_failed": 0, "seconds_running": 0.0}

    # -- sandbox is created lazily: a query-only department needs none ---------------
    def sandbox(self) -> Any:
        if self._sandbox is None:
            from yumen.sandbox import get_backend

            self._sandbox = get_backend(self.config.sandbox)
        return self._sandbox

    def handle(self, payload: bytes, signature: bytes, algorithm_source: bytes) -> tuple[bytes, bytes] | None:
        """Run one ticket; return the signed receipt (payload, signature), or None to ignore.

        Tickets that fail verification are dropped and logged: they did not come from the
        pinned broker, so there is nobody trustworthy to answer.
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
            if stored is not None:
                return stored  # executed before: send the same receipt again
            if claimed:
                self._running.add(key)
        if not claimed:
            # Claimed by an earlier process that died mid-job: the data may have been
            # touched, so the budget stays spent and the job is reported failed.
            receipt = self._receipt(ticket, digest, status="failed", error="interrupted by a connector restart")
            return self._finish(ticket, receipt, None)
        try:
            return self._execute(ticket, digest, algorithm_source)
        finally:
            with self._running_lock:
                self._running.discard(key)

    def _receipt(self, ticket: Ticket, digest: str, **fields: Any) -> Receipt:
        return Receipt(
            job_id=ticket.job_id, dataset=ticket.dataset, connector=self.config.id,
            department=self.config.department, ticket_digest=digest, at_ms=int(time.time() * 1000), **fields,
        )

    def _finish(self, ticket: Ticket, receipt: Receipt, salt: bytes | None) -> tuple[bytes, bytes]:
        payload, sig = receipt.sign(self._key)
        self.state.finish(ticket.job_id, ticket.dataset, payload, sig, salt)
        return payload, sig

    def _refusal(self, ticket: Ticket) -> str:
        if ticket.connector != self.config.id:
            return f"the ticket is addressed to connector {ticket.connector}"
        if ticket.dataset not in self.datasets:
            return f"this connector does not serve dataset {ticket.dataset}"
        if ticket.expires_at_ms < time.time() * 1000:
            return "the ticket has expired"
        return self.config.local_policy.refusal(tier=ticket.tier, purpose=ticket.purpose, epsilon=ticket.epsilon)

    def _execute(self, ticket: Ticket, digest: str, algorithm_source: bytes) -> tuple[bytes, bytes]:
        reason = self._refusal(ticket)
        if reason:
            self.metrics["jobs_refused"] += 1
            log.info("job %s refused locally: %s", ticket.job_id, reason)
            return self._finish(ticket, self._receipt(ticket, digest, status="refused", error=reason), None)
        served = self.datasets[ticket.dataset]
        started = time.monotonic()
        salt = os.urandom(32)
        try:
            reg = served.refresh()
            if "query" in ticket.work:
                fields = self._run_query(served, reg, ticket, salt)
            else:
                fields = self._run_algorithm(served, reg, ticket, algorithm_source, salt)
            self.metrics["jobs_run"] += 1
        except YumenError as e:
            self.metrics["jobs_failed"] += 1
            log.info("job %s failed: %s", ticket.job_id, e.message)
            fields = {"status": "failed", "error": e.message, "epsilon_charged": ticket.epsilon}
        except Exception:  # noqa: BLE001 - the department's log gets the details, the operator a safe message
            self.metrics["jobs_failed"] += 1
            log.exception("job %s failed with an internal error", ticket.job_id)
            fields = {"status": "failed", "error": "internal error at the connector", "epsilon_charged": ticket.epsilon}
        elapsed = time.monotonic() - started
        self.metrics["seconds_running"] += elapsed
        metering = dict(fields.pop("metering", {}))
        metering["wall_ms"] = int(elapsed * 1000)
        receipt = self._receipt(ticket, digest, metering=metering, dataset_version=served.registration.version, **fields)
        return self._finish(ticket, receipt, salt)

    def _run_query(self, served: ServedDataset, reg: DatasetRegistration, ticket: Ticket, salt: bytes) -> dict[str, Any]:
        from yumen.privacy import dp_query

        query = Query.from_dict(ticket.work["query"])
        release = dp_query(served.source.scan(), reg, query, ticket.epsilon)
        return self._released(release, query.aggregate.value, salt, grouped=bool(query.group_by))

    def _run_algorithm(
        self, served: ServedDataset, reg: DatasetRegistration, ticket: Ticket, source: bytes, salt: bytes
    ) -> dict[str, Any]:
        from yumen.privacy import release_outputs
        from yumen.sandbox import SandboxRequest, Status

        algo = ticket.work["algorithm"]
        if "sha256:" + hashlib.sha256(source).hexdigest() != algo["digest"]:
            raise YumenError(Code.VERIFICATION_FAILED, "the algorithm does not match the digest in the ticket")
        ranges = [OutputRange(name=o["name"], lower=float(o["lower"]), upper=float(o["upper"])) for o in algo["outputs"]]
        snapshots = self.config.state_dir / "snapshots"
        snapshot = served.source.snapshot(snapshots)
        backend = self.sandbox()
        with tempfile.TemporaryDirectory(prefix="yumen-job-") as tmp:
            report = backend.run(SandboxRequest(
                algorithm=source, inputs={reg.id: snapshot}, params=algo.get("params", {}),
                timeout_s=float(algo.get("timeout_s", 60)), memory_mb=int(algo.get("memory_mb", 512)),
            ))
        common = {
            "algorithm_digest": algo["digest"], "backend": report.backend, "runtime_digest": report.runtime_digest,
            "metering": {"cpu_ms": int(report.usage.cpu_ms)},
        }
        if report.status is not Status.OK or report.result is None:
            log.info("job %s: sandbox ended %s: %s", ticket.job_id, report.status.value, report.error)
            return {**common, "status": "failed", "epsilon_charged": ticket.epsilon,
                    "error": f"the algorithm ended with status {report.status.value}: {report.error}"}
        release = release_outputs(report.result, ranges, ticket.epsilon)
        return {**common, **self._released(release, "", salt, grouped=False)}

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
            "epsilon_charged": release.epsilon,
            "values": tuple(values),
            "commitment": _commitment(salt, dict(release.exact)),
        }
