"""Sample data for the audit tests: a plausible history of every entry type."""

from __future__ import annotations

import base64
import hashlib

from yumen.audit import (
    DatasetRegistered,
    JobDecided,
    JobExecuted,
    JobReleased,
    LicenseChanged,
    PolicyChanged,
    StewardshipRecorded,
)

ORIGIN = "yumen.test/log"
T = "2026-11-27T03:30:00Z"


def _connector_identity():
    """The sample connector's key and certificate (a real P-256 certificate, as the log carries it)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conn-cma")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM).decode(), cert.fingerprint(hashes.SHA256()).hex()


CONNECTOR_KEY, CONNECTOR_PEM, CONNECTOR_FP = _connector_identity()


def sign(purpose: str, payload: bytes, key=None) -> str:
    """The sample connector's signature (or ``key``'s), base64, as the log carries it."""
    from yumen.identity import sign_payload

    return base64.b64encode(sign_payload(key or CONNECTOR_KEY, purpose, payload)).decode()


def receipt_details(job_id: str, *, status: str = "ok", destruction: dict | None = None, runs: int = 0) -> dict:
    """``job_executed`` details carrying a receipt with a destruction confirmation (as the broker logs it).

    The receipt's signature goes into the entry's ``receipt_signature``: use :func:`executed`.
    """
    import json

    from yumen.destruction import confirmation

    receipt = {"job_id": job_id, "dataset": "weather-2025", "connector": "conn-cma", "status": status,
               "at_ms": 1_800_000_000_000, "metering": {"sandbox_runs": runs} if runs else {"wall_ms": 12}}
    receipt["destruction"] = (confirmation("query" if not runs else "custom-algorithm", runs, at_ms=receipt["at_ms"],
                                           verified=True) if destruction is None else destruction)
    if not receipt["destruction"]:
        del receipt["destruction"]
    return {"status": status, "receipt": base64.b64encode(json.dumps(receipt).encode()).decode(),
            "connector_certificate": CONNECTOR_FP}


def executed(entry, details: dict, key=None):
    """``entry`` (a JobExecuted) with ``details``, its receipt signed by the sample connector (or ``key``)."""
    import dataclasses

    signature = (sign("receipt", base64.b64decode(details["receipt"]), key) if details.get("receipt")
                 else entry.receipt_signature)
    return dataclasses.replace(entry, details=details, receipt_signature=signature)


def digest(n: int | str) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


def sample_entries(jobs: int = 3, *, connector: tuple | None = None) -> list:
    """A plausible history: a dataset, a policy, a license, then jobs (decided, executed, released).

    ``connector`` is ``(private key, certificate PEM)`` of the connector that signs the receipts
    (default: a self-signed sample one).
    """
    key, pem, fp = CONNECTOR_KEY, CONNECTOR_PEM, CONNECTOR_FP
    if connector is not None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        key, pem = connector
        fp = x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256()).hex()
    out = [
        DatasetRegistered(time=T, dataset_id="weather-2025", version=digest("ds1"), department="cma",
                          registration_digest=digest("reg1"), level="L2",
                          details={"connector": "conn-cma", "connector_certificate": fp,
                                   "connector_certificate_pem": pem}),
        PolicyChanged(time=T, policy_version=digest("pol1"), changed_by="admin-1", summary="initial policy"),
        LicenseChanged(time=T, license_id="LIC-7", operator="op-1", action="issued", license_digest=digest("lic"),
                       changed_by="admin-1"),
    ]
    for j in range(jobs):
        jid = f"job-{j}"
        out.append(JobDecided(time=T, job_id=jid, allowed=True, policy_version=digest("pol1"), matched_rule="p, operator, L2, query",
                              obligations={"mechanism": "laplace", "epsilon_max": "0.5"}, operator="op-1", license_id="LIC-7",
                              datasets=("weather-2025",), tier="query", purpose="research", epsilon="0.25", reason="",
                              request_digest=digest(jid)))
        out.append(executed(JobExecuted(
            time=T, job_id=jid, connector="conn-cma", dataset_id="weather-2025", dataset_version=digest("ds1"),
            mechanism="laplace", mechanism_params={"scale": "4"}, epsilon_charged="0.25",
            output_commitment=digest(f"c{j}"), metering={"rows": 1000, "cpu_ms": 12},
            receipt_signature=base64.b64encode(bytes(64)).decode()), dict(receipt_details(jid), connector_certificate=fp),
            key))
        out.append(JobReleased(time=T, job_id=jid, result_digest=digest(f"r{j}"), bill={"amount": "1.50", "currency": "CNY"}))
    return out


def verification_entry(request_id: str, *, subject: str = "hmac:" + "ab" * 32, answer: str = "yes",
                       per_subject: int = 3, at_ms: int = 1_800_000_000_000) -> StewardshipRecorded:
    """A logged verification answer (the department's statement as the broker logs it)."""
    statement = {"v": 1, "request_id": request_id, "dataset": "weather-2025", "version": digest("ds1"),
                 "license": "LIC-7", "operator": "op-1", "purpose": "research", "fields": ["region"],
                 "subject": subject, "answer": answer, "mismatched": [], "reason": "", "at_ms": at_ms,
                 "limits": {"per_license_per_day": 100, "per_subject_per_day": per_subject}}
    from yumen.canonical import canonical_json

    return StewardshipRecorded(time=T, kind="verification", dataset_id="weather-2025", dataset_version=digest("ds1"),
                               department="cma", connector="conn-cma", statement=statement,
                               statement_signature=sign("verification-answer", canonical_json(statement)),
                               details={"operator": "op-1", "license": "LIC-7", "connector_certificate": CONNECTOR_FP})


def destroyed_entry(version: str, *, verified: bool = True) -> StewardshipRecorded:
    from yumen.destruction import SNAPSHOT_MECHANISM

    statement = {"v": 1, "kind": "version-destroyed", "dataset": "weather-2025", "department": "cma",
                 "connector": "conn-cma", "version": version, "items": [{"kind": "snapshot", "count": 1}],
                 "mechanism": SNAPSHOT_MECHANISM, "at_ms": 1_800_000_000_000, "verified": verified}
    from yumen.canonical import canonical_json

    return StewardshipRecorded(time=T, kind="version_destroyed", dataset_id="weather-2025", dataset_version=version,
                               department="cma", connector="conn-cma", statement=statement,
                               statement_signature=sign("destruction", canonical_json(statement)),
                               details={"connector_certificate": CONNECTOR_FP})


