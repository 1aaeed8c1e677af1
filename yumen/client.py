"""The operator's SDK: a typed client for the broker's catalog and job services.

Generated protobuf types stay inside this module; callers get plain records.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any, Iterator

import grpc

from yumen.catalog import DatasetRegistration
from yumen.jobs import JobRequest
from yumen.policy import License, PolicyBundle
from yumen.rpc import TlsFiles, call, error_of, secure_channel
from yumen.v1 import catalog_pb2, catalog_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from yumen.wire import dataset_from_proto, job_to_proto

__all__ = ["AdminClient", "YumenClient", "JobInfo", "JobUpdate", "JobResult"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobInfo:
    job_id: str
    state: str
    message: str
    operator: str
    license: str
    datasets: tuple[str, ...]
    tier: str
    epsilon: str
    matched_rule: str
    policy_version: str
    price_held: str = ""  # yuan held at acceptance ("" for jobs accepted before charges were held)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["datasets"] = list(self.datasets)
        return d


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobUpdate:
    job_id: str
    state: str
    message: str
    at_ms: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobResult:
    job_id: str
    values: tuple[dict[str, Any], ...]
    mechanism: str
    epsilon_spent: str
    result_digest: str
    provenance: tuple[dict[str, str], ...]
    log_index: int
    bill: dict[str, str] = dataclasses.field(default_factory=dict)
    ciphertext: bytes = b""  # homomorphic delivery: decrypt with decrypt()
    mean: bool = False  # the job asked for a mean (decryption divides sums by counts)
    suppressed_groups: tuple[str, ...] = ()
    # what the job cost the most exposed person: epsilon, and rho and delta under zCDP
    loss: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def encrypted(self) -> bool:
        return bool(self.ciphertext)

    def decrypt(self, secret_context: bytes) -> "JobResult":
        """Read an encrypted result with the operator's secret CKKS context.

        Slot *i* holds the sum over departments of value *i*. A mean arrives as sums and
        counts and is divided here, exactly as the broker does for plaintext results.
        """
        from yumen.privacy import he_decrypt
        from yumen.results import means_from_parts

        if not self.ciphertext:
            return self
        slots = he_decrypt(secret_context, self.ciphertext)
        values = [dict(v, value=slots[i]) for i, v in enumerate(self.values)]
        if any(v["name"] == "sum" for v in values) and any(v["name"] == "count" for v in values) and self.mean:
            values = means_from_parts(values)
        return dataclasses.replace(self, values=tuple(values), ciphertext=b"")

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "values": list(self.values), "mechanism": self.mechanism,
            "epsilon_spent": self.epsilon_spent, "result_digest": self.result_digest,
            "provenance": list(self.provenance), "log_index": self.log_index, "bill": dict(self.bill),
            "encrypted": self.encrypted, "suppressed_groups": list(self.suppressed_groups), "loss": dict(self.loss),
        }


def _info(s: jobs_pb2.JobStatus) -> JobInfo:
    return JobInfo(
        job_id=s.job_id, state=s.state, message=s.message, operator=s.operator, license=s.license,
        datasets=tuple(s.datasets), tier=s.tier, epsilon=s.epsilon, matched_rule=s.matched_rule,
        policy_version=s.policy_version, price_held=s.price_held,
    )


class YumenClient:
    def __init__(self, target: str, tls: TlsFiles) -> None:
        from yumen.v1 import stewardship_pb2_grpc

        self.channel = secure_channel(target, tls)
        self._tls = tls
        self._catalog = catalog_pb2_grpc.CatalogServiceStub(self.channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self._steward = stewardship_pb2_grpc.StewardshipServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "YumenClient":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def catalog(self, *, department: str = "", level: str = "", keyword: str = "") -> list[tuple[DatasetRegistration, bool]]:
        resp = call(self._catalog.ListDatasets, catalog_pb2.ListDatasetsRequest(department=department, level=level, keyword=keyword), timeout=30)
        return [(dataset_from_proto(d), d.online) for d in resp.datasets]

    def dataset(self, dataset_id: str) -> tuple[DatasetRegistration, bool]:
        d = call(self._catalog.GetDataset, catalog_pb2.GetDatasetRequest(id=dataset_id), timeout=30)
        return dataset_from_proto(d), d.online

    def submit(self, request: JobRequest) -> JobInfo:
        return _info(call(self._jobs.SubmitJob, jobs_pb2.SubmitJobRequest(job=job_to_proto(request)), timeout=60))

    def explain(self, request: JobRequest) -> dict[str, Any]:
        """What policy would decide for ``request``, its budget and price; nothing is spent."""
        e = call(self._jobs.ExplainJob, jobs_pb2.SubmitJobRequest(job=job_to_proto(request)), timeout=30)
        return {
            "allowed": e.allowed, "reason": e.reason, "gate": e.gate, "matched_rule": e.matched_rule,
            "policy_version": e.policy_version, "obligations": dict(e.obligations),
            "epsilon_requested": e.epsilon_requested, "epsilon_remaining": e.epsilon_remaining,
            "epsilon_remaining_after": e.epsilon_remaining_after, "runs_remaining": e.runs_remaining,
            "price": e.price, "period": e.period, "accounting": e.accounting or "pure", "delta": e.delta,
            "cost": e.cost, "product": e.product,
            "quote": {"lines": [{"unit": x.unit, "quantity": x.quantity, "unit_price": x.unit_price, "cap": x.cap,
                                 "amount": x.amount} for x in e.price_lines]},
            "accounts": [{"kind": a.kind, "window": a.window, "cap": a.cap, "remaining": a.remaining,
                          "remaining_after": a.remaining_after, "runs_remaining": a.runs_remaining} for a in e.accounts],
        }

    def job(self, job_id: str) -> JobInfo:
        return _info(call(self._jobs.GetJob, jobs_pb2.JobRef(job_id=job_id), timeout=30))

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel your own queued or running job (see docs/privacy.md for what happens to its budget)."""
        return _info(call(self._jobs.CancelJob, jobs_pb2.JobRef(job_id=job_id), timeout=30))

    def watch(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobUpdate]:
        stream = self._jobs.WatchJob(jobs_pb2.JobRef(job_id=job_id), timeout=timeout)
        try:
            for ev in stream:
                yield JobUpdate(job_id=ev.job_id, state=ev.state, message=ev.message, at_ms=ev.at_unix_ms)
        except grpc.RpcError as e:
            raise error_of(e) from None

    def result(self, job_id: str, *, mean: bool = False) -> JobResult:
        r = call(self._jobs.GetResult, jobs_pb2.JobRef(job_id=job_id), timeout=30)
        return JobResult(
            job_id=r.job_id,
            values=tuple({"name": v.name, "group": v.group, "value": v.value, "noise_scale": v.noise_scale, "ci95": v.ci95} for v in r.values),
            mechanism=r.mechanism, epsilon_spent=r.epsilon_spent, result_digest=r.result_digest,
            provenance=tuple({"dataset": p.dataset, "department": p.department, "dataset_version": p.dataset_version,
                              "receipt_digest": p.receipt_digest} for p in r.provenance),
            log_index=r.log_index, bill=dict(r.bill), ciphertext=r.ciphertext, mean=mean,
            suppressed_groups=tuple(r.suppressed_groups), loss=dict(r.loss),
        )

    # -- stewardship: quality reports, feedback, verification -------------------------------
    def stewardship(self, dataset_id: str) -> dict[str, Any]:
        """A dataset's quality report (its version's, checked against the department's certificate and
        the data space CA), its digest, the feedback count, and what may be verified on it."""
        import json

        from yumen.verification import check_offer

        reg, _online = self.dataset(dataset_id)
        s = call(self._steward.GetStewardship, _stewardship_pb2().GetStewardshipRequest(dataset=dataset_id), timeout=30)
        ca = self._tls.ca.read_bytes()
        out: dict[str, Any] = {"dataset": dataset_id, "version": reg.version, "feedback_count": s.feedback_count,
                               "quality": None, "quality_digest": "", "quality_versions": s.quality_version_count,
                               "verification": None}
        if s.quality:
            _check_signed(s.quality, s.quality_signature, s.quality_certificate, ca=ca, department=reg.department,
                          purpose="quality-report")
            report = json.loads(s.quality)
            if report.get("dataset") != dataset_id or report.get("version") != reg.version:
                from yumen.errors import Code, YumenError

                raise YumenError(Code.VERIFICATION_FAILED, f"the quality report is not for {dataset_id} {reg.version}")
            from yumen.canonical import digest_of

            out["quality"] = report
            out["quality_digest"] = digest_of(report)
        if s.verification_offer:
            offer = check_offer(s.verification_offer, s.verification_signature, s.connector_certificate, ca_pem=ca,
                                dataset=dataset_id, department=reg.department)
            out["verification"] = dict(offer["policy"], policy_digest=offer.get("policy_digest", ""))
        return out

    def feedback(self, dataset_id: str, message: str, *, category: str = "other", version: str = "") -> dict[str, Any]:
        """Flag a quality problem on a dataset; the broker counts it and forwards it to the department."""
        ack = call(self._steward.SubmitFeedback, _stewardship_pb2().Feedback(
            dataset=dataset_id, version=version, category=category, message=message), timeout=30)
        return {"id": ack.id, "count": ack.count, "delivered": ack.delivered}

    def verify(self, dataset_id: str, *, subject: str, claims: dict[str, Any], purpose: str, license: str = "",
               which: bool = False, request_id: str = "") -> dict[str, Any]:
        """Ask whether a record matches the department's data; yes, no, or refused.

        The subject and claims are sealed here to the department's key, from an offer whose
        signature is checked against the data space CA: the broker relays bytes it cannot open.
        The answer's signature is checked against the same certificate.
        """
        import json
        import uuid

        from yumen.verification import check_offer, seal_request

        reg, _online = self.dataset(dataset_id)
        s = call(self._steward.GetStewardship, _stewardship_pb2().GetStewardshipRequest(dataset=dataset_id), timeout=30)
        if not s.verification_offer:
            from yumen.errors import Code, YumenError

            raise YumenError(Code.POLICY_DENIED, f"dataset {dataset_id} is not open to verification",
                             hint="`yumen catalog show` says whether a dataset can be verified")
        offer = check_offer(s.verification_offer, s.verification_signature, s.connector_certificate,
                            ca_pem=self._tls.ca.read_bytes(), dataset=dataset_id, department=reg.department)
        if not license:  # the request is sealed to the license the broker will read off this certificate
            from yumen.identity import identity_from_pem

            license = identity_from_pem(self._tls.cert.read_bytes()).license
        request_id = request_id or "v-" + uuid.uuid4().hex[:20]
        sealed = seal_request(offer, request_id=request_id, license=license, purpose=purpose, subject=subject,
                              claims=claims)
        a = call(self._steward.Verify, _stewardship_pb2().VerificationRequest(
            request_id=request_id, dataset=dataset_id, purpose=purpose, fields=sorted(claims), sealed=sealed,
            want_mismatches=which), timeout=60)
        _check_signed(a.statement, a.signature, s.connector_certificate, ca=self._tls.ca.read_bytes(),
                      department=reg.department, purpose="verification-answer")
        statement = json.loads(a.statement)
        if statement.get("request_id") != request_id or statement.get("answer") != a.answer:
            from yumen.errors import Code, YumenError

            raise YumenError(Code.VERIFICATION_FAILED, "the signed answer does not match the answer relayed")
        return {"request_id": request_id, "dataset": dataset_id, "answer": a.answer, "mismatched": list(a.mismatched),
                "message": a.message, "log_index": a.log_index, "subject_hash": statement.get("subject", ""),
                "version": statement.get("version", "")}


def _stewardship_pb2() -> Any:
    from yumen.v1 import stewardship_pb2

    return stewardship_pb2


def _check_signed(payload: bytes, signature: bytes, certificate_pem: bytes, *, ca: bytes, department: str,
                  purpose: str) -> None:
    """Raise VERIFICATION_FAILED unless ``payload`` is signed by a connector certificate of ``department``
    issued by the data space CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from yumen.errors import Code, YumenError
    from yumen.identity import Role, identity_from_pem, verify_payload

    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
        x509.load_pem_x509_certificate(ca).public_key().verify(  # type: ignore[call-arg]
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - any failure means the certificate is not the CA's
        raise YumenError(Code.VERIFICATION_FAILED, f"the {purpose} is not signed by a certificate of the data space CA") from None
    who = identity_from_pem(certificate_pem)
    if who.role is not Role.CONNECTOR or who.department != department:
        raise YumenError(Code.VERIFICATION_FAILED, f"the {purpose} is not signed by a connector of department {department}")
    verify_payload(cert, purpose, payload, signature)


class AdminClient:
    """The data authority's client: licenses and policy versions."""

    def __init__(self, target: str, tls: TlsFiles) -> None:
        from yumen.v1 import admin_pb2_grpc

        self.channel = secure_channel(target, tls)
        self._admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def issue_license(self, lic: License) -> License:
        from yumen.wire import license_from_proto, license_to_proto

        return license_from_proto(call(self._admin.IssueLicense, license_to_proto(lic), timeout=30))

    def change_license(self, license_id: str, action: str, *, valid_until: str = "", reason: str = "") -> License:
        from yumen.v1 import admin_pb2
        from yumen.wire import license_from_proto

        msg = admin_pb2.LicenseChange(id=license_id, action=action, valid_until=valid_until, reason=reason)
        return license_from_proto(call(self._admin.ChangeLicense, msg, timeout=30))

    def licenses(self) -> list[License]:
        from yumen.v1 import admin_pb2
        from yumen.wire import license_from_proto

        resp = call(self._admin.ListLicenses, admin_pb2.ListLicensesRequest(), timeout=30)
        return [license_from_proto(x) for x in resp.licenses]

    def accounts(self) -> dict[str, Any]:
        """The broker's ledger and bill totals (administrators and auditors)."""
        from fractions import Fraction

        from yumen.v1 import admin_pb2

        a = call(self._admin.GetAccounts, admin_pb2.GetAccountsRequest(), timeout=60)
        return {
            "ledger": {(r.license, r.dataset, r.period): (Fraction(r.spent), r.runs) for r in a.ledger},
            "bills": {(b.operator, b.currency): (Decimal(b.amount), b.jobs) for b in a.bills},
        }

    def revoke_certificate(self, fingerprint: str, *, name: str = "", reason: str = "") -> dict[str, Any]:
        from yumen.v1 import admin_pb2

        r = call(self._admin.RevokeCertificate,
                 admin_pb2.RevokeCertificateRequest(fingerprint=fingerprint, name=name, reason=reason), timeout=30)
        return {"fingerprint": r.fingerprint, "name": r.name, "reason": r.reason, "revoked_by": r.revoked_by,
                "at_ms": r.at_unix_ms}

    def revoked(self) -> list[dict[str, Any]]:
        from yumen.v1 import admin_pb2

        r = call(self._admin.ListRevoked, admin_pb2.ListRevokedRequest(), timeout=30)
        return [{"fingerprint": c.fingerprint, "name": c.name, "reason": c.reason, "revoked_by": c.revoked_by,
                 "at_ms": c.at_unix_ms} for c in r.certificates]

    def reexecute(self, job_id: str) -> list[dict[str, Any]]:
        """Ask the departments of a logged job to re-run it and check its output commitment."""
        from yumen.v1 import admin_pb2

        r = call(self._admin.ReexecuteJob, admin_pb2.ReexecuteRequest(job_id=job_id), timeout=600)
        return [{"dataset": d.dataset, "department": d.department, "dataset_version": d.dataset_version,
                 "logged_commitment": d.logged_commitment, "recomputed_commitment": d.recomputed_commitment,
                 "matches": d.matches, "error": d.error} for d in r.datasets]

    def policy(self, version: str = "") -> tuple[str, PolicyBundle]:
        from yumen.v1 import admin_pb2

        p = call(self._admin.GetPolicy, admin_pb2.GetPolicyRequest(version=version), timeout=30)
        return p.version, PolicyBundle(model=p.model, rules=p.rules, settings=p.settings)

    def set_policy(self, bundle: PolicyBundle, *, replaces: str = "") -> str:
        """Put ``bundle`` in force in place of version ``replaces`` (default: the version in
        force when this call reads it). The broker refuses with ``CONFLICT`` when another
        change came first, so no change is ever built on a version that was already replaced."""
        from yumen.v1 import admin_pb2

        if not replaces:
            replaces, _ = self.policy()
        p = call(self._admin.SetPolicy, admin_pb2.Policy(**bundle.to_dict(), replaces=replaces), timeout=30)
        return p.version
