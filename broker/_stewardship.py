"""The broker's part in data stewardship: quality reports, feedback, verification, destruction.

* Quality reports arrive signed by the department (in its Hello, or on its stream as soon as
  the connector has made them). The broker checks the signature against the connector's
  certificate and keeps the report for ``yumen catalog show``. The report's digest, loss
  and verdict go into the ``dataset_registered`` entry of its version, or, when the version
  was logged before its report arrived, into a ``stewardship`` entry of kind
  ``quality_report`` (the report itself holds noisy real numbers, which log entries never do).
* Operators flag quality problems (``yumen catalog feedback``). The broker counts them per
  dataset (:meth:`feedback_count`, for the dataset's disclosure) and forwards each, signed,
  to the department's connector, now or when it next connects.
* Verification requests are checked (license, purpose, the department's approved fields, the
  license's daily cap), ordered to the department with the sealed subject the broker cannot
  open, and every answer is logged (``stewardship`` entry, kind ``verification``).
* Confirmations that an expired retained version was destroyed are logged likewise.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import queue
import re
import threading
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from yumen.audit import StewardshipRecorded
from yumen.canonical import canonical_json, digest_of
from yumen.errors import Code, YumenError
from yumen.identity import Identity, Role, sign_payload, verify_payload
from yumen.jobs import Purpose
from yumen.verification import ANSWER_PURPOSE, MAX_SEALED_BYTES, ORDER_PURPOSE, check_request_id, sealed_digest

from yumen.broker._steward_store import StewardStore

log = logging.getLogger(__name__)

__all__ = ["BrokerStewardship", "OutgoingStewardship", "FEEDBACK_CATEGORIES"]

REPORT_PURPOSE = "quality-report"
DESTRUCTION_PURPOSE = "destruction"
FEEDBACK_PURPOSE = "quality-feedback"
FEEDBACK_CATEGORIES = ("nulls", "bounds", "categories", "duplicates", "freshness", "drift", "schema", "other")
_MAX_FEEDBACK = 2000


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutgoingStewardship:
    """Something for a connector's stream other than a ticket: feedback, or a verification order."""

    kind: str  # "feedback" | "verify"
    payload: bytes
    signature: bytes
    sealed: bytes = b""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class BrokerStewardship:
    def __init__(self, broker: Any, store: StewardStore, *, order_ttl_s: int = 60, answer_timeout_s: float = 30.0) -> None:
        self.broker = broker
        self.store = store
        self._ttl_ms = order_ttl_s * 1000
        self._timeout = answer_timeout_s
        self._answers: dict[str, "queue.Queue[tuple[bytes, bytes]]"] = {}
        self._lock = threading.Lock()

    # -- quality -----------------------------------------------------------------------
    def accept_hello(self, identity: Identity, certificate: x509.Certificate, datasets: set[str],
                     reports: list[tuple[bytes, bytes]], offers: list[tuple[bytes, bytes]]) -> None:
        """Keep the signed reports and offers a connector's Hello carries (before its registrations are logged)."""
        for payload, signature in reports:
            try:
                self.accept_quality(identity, certificate, payload, signature, datasets=datasets)
            except YumenError as e:
                log.warning("quality report from %s refused: %s", identity.name, e.message)
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        for payload, signature in offers:
            try:
                verify_payload(certificate, "verification-offer", payload, signature)
                offer = json.loads(payload)
                if offer.get("dataset") not in datasets or offer.get("department") != identity.department:
                    raise YumenError(Code.VERIFICATION_FAILED, f"offer for {offer.get('dataset')!r} is not this connector's")
                self.store.put_offer(offer["dataset"], payload.decode(), _b64(signature), pem, identity.name)
            except (YumenError, ValueError, KeyError) as e:
                log.warning("verification offer from %s refused: %s", identity.name, getattr(e, "message", e))

    def accept_quality(self, identity: Identity, certificate: x509.Certificate, payload: bytes, signature: bytes,
                       *, datasets: set[str] | None = None) -> None:
        verify_payload(certificate, REPORT_PURPOSE, payload, signature)
        try:
            report = json.loads(payload)
            dataset, version = str(report["dataset"]), str(report["version"])
        except (ValueError, KeyError, TypeError):
            raise YumenError(Code.VERIFICATION_FAILED, "the quality report is malformed") from None
        owner = self.broker.store.get_dataset(dataset)
        ours = (datasets is not None and dataset in datasets) or (owner is not None and owner[1] == identity.name)
        if not ours:
            raise YumenError(Code.VERIFICATION_FAILED, f"{identity.name} does not serve {dataset}")
        new = self.store.put_quality(dataset, version, payload.decode(), _b64(signature), digest_of(report), identity.name,
                                     certificate.public_bytes(serialization.Encoding.PEM).decode())
        if new and owner is not None and owner[1] == identity.name and owner[0].version == version:
            # the version is in the log already (its report was made off the job path and came
            # after it): the report's digest gets its own entry
            self.broker.audit.tlog.append(StewardshipRecorded(
                kind="quality_report", dataset_id=dataset, dataset_version=version, department=owner[0].department,
                connector=identity.name, statement={}, statement_signature=_b64(signature),
                details={"quality": self.quality_of(dataset, version)},
            ))

    def quality_of(self, dataset: str, version: str) -> dict[str, Any]:
        """What the log records of a version's quality report: digest, loss, verdict ({} when none)."""
        found = self.store.quality(dataset, version)
        if found is None:
            return {}
        report = json.loads(found["report"])
        loss = report.get("loss") or {}
        return {"digest": found["digest"], "passed": bool(report.get("passed")),
                "accounting": str(loss.get("accounting", "pure")),
                **{k: str(loss[k]) for k in ("epsilon", "rho") if k in loss}}

    def stewardship(self, identity: Identity, dataset: str) -> dict[str, Any]:
        """What ``yumen catalog show`` adds to a registration: the published version's quality report
        (signed, with its digest), the feedback count, and the verification offer."""
        reg, _ = self.broker.dataset(dataset)  # NOT_FOUND with a hint when unknown
        quality = self.store.quality(dataset, reg.version) or {}
        offer = self.store.offer(dataset) or {}
        return {"dataset": dataset, "quality": quality.get("report", ""), "quality_signature": quality.get("signature", ""),
                "quality_certificate": quality.get("certificate", ""), "quality_digest": quality.get("digest", ""),
                "quality_versions": self.store.quality_versions(dataset),
                "feedback_count": self.store.feedback_count(dataset), "offer": offer.get("offer", ""),
                "offer_signature": offer.get("signature", ""), "certificate": offer.get("certificate", "")}

    def feedback_count(self, dataset: str) -> int:
        """How many quality problems operators flagged on ``dataset``."""
        return self.store.feedback_count(dataset)

    # -- feedback ----------------------------------------------------------------------
    def feedback(self, identity: Identity, *, dataset: str, version: str, category: str, message: str) -> dict[str, Any]:
        if identity.role is not Role.OPERATOR:
            raise YumenError(Code.PERMISSION_DENIED, "only operator certificates may send quality feedback")
        reg, _ = self.broker.dataset(dataset)
        if category not in FEEDBACK_CATEGORIES:
            raise YumenError(Code.INVALID_ARGUMENT, f"feedback category {category!r} is unknown",
                             hint=f"use one of {', '.join(FEEDBACK_CATEGORIES)}")
        message = message.strip()
        if not message or len(message) > _MAX_FEEDBACK:
            raise YumenError(Code.INVALID_ARGUMENT, f"the feedback message must be 1 to {_MAX_FEEDBACK} characters",
                             hint="say what you saw, e.g. \"region is null in most rows since 2026-11\"")
        if version and not re.fullmatch(r"sha256:[0-9a-f]{64}", version):
            raise YumenError(Code.INVALID_ARGUMENT, f"version {version!r} is not a dataset version digest",
                             hint="copy it from `yumen catalog show`, or leave --version out")
        found = self.broker.store.get_dataset(dataset)
        connector = found[1] if found else ""
        body = {"id": "{id}", "dataset": dataset, "version": version or reg.version, "category": category,
                "message": message, "operator": identity.name, "license": identity.license,
                "at_ms": int(time.time() * 1000)}
        ident, count = self.store.add_feedback(dataset, canonical_json(body).decode(), connector)
        delivered = self._deliver(connector)
        return {"id": ident, "count": count, "delivered": ident in delivered}

    def _deliver(self, connector: str) -> set[str]:
        with self.broker._links_lock:
            link = self.broker._links.get(connector)
        if link is None:
            return set()
        sent = set()
        for ident, payload in self.store.undelivered_feedback(connector):
            data = payload.encode()
            link.outbox.put(OutgoingStewardship(kind="feedback", payload=data,
                                                signature=sign_payload(self.broker._key, FEEDBACK_PURPOSE, data)))
            self.store.mark_delivered(ident)
            sent.add(ident)
        return sent

    def on_connect(self, connector: str) -> None:
        """Forward feedback that waited for this connector."""
        self._deliver(connector)

    # -- verification --------------------------------------------------------------------
    def verify(self, identity: Identity, *, request_id: str, dataset: str, purpose: str, fields: list[str],
               sealed: bytes, want_mismatches: bool) -> dict[str, Any]:
        if identity.role is not Role.OPERATOR:
            raise YumenError(Code.PERMISSION_DENIED, "only operator certificates may ask for verifications")
        check_request_id(request_id)
        done = self.store.answer(identity.name, request_id)
        if done is not None:
            return json.loads(done)  # an idempotent retry: the same answer, no second count
        reg, online = self.broker.dataset(dataset)
        found = self.store.offer(dataset)
        if found is None:
            raise YumenError(Code.POLICY_DENIED, f"dataset {dataset} is not open to verification",
                             hint="`yumen catalog show` says whether a dataset can be verified")
        policy = json.loads(found["offer"])["policy"]
        if purpose not in {p.value for p in Purpose}:
            raise YumenError(Code.INVALID_ARGUMENT, f"purpose {purpose!r} is unknown")
        if purpose not in policy["purposes"]:
            raise YumenError(Code.POLICY_DENIED, f"the department answers verifications on {dataset} only for "
                                                 f"{', '.join(policy['purposes'])}")
        if not fields or len(set(fields)) != len(fields) or not set(fields) <= set(policy["fields"]):
            raise YumenError(Code.POLICY_DENIED, f"fields {', '.join(fields) or '(none)'} may not be verified on {dataset}",
                             hint=f"the department approved: {', '.join(policy['fields'])}")
        if want_mismatches and not policy.get("reveal_mismatches"):
            raise YumenError(Code.POLICY_DENIED, f"the department does not say which fields mismatch on {dataset}",
                             hint="ask without --which")
        if not 0 < len(sealed) <= MAX_SEALED_BYTES:
            raise YumenError(Code.INVALID_ARGUMENT, f"the sealed request must be 1 to {MAX_SEALED_BYTES} bytes")
        lic = self.broker.license(identity.license)
        why = "no license" if lic is None else lic.refusal(purpose=purpose, level=reg.level.value,
                                                            at=dt.datetime.now(dt.timezone.utc))
        if why:
            raise YumenError(Code.POLICY_DENIED, f"verification refused: {why}")
        if not online:
            raise YumenError(Code.UNAVAILABLE, f"the connector of department {reg.department} is offline",
                             hint="try again later; nothing was counted")
        window = f"day:{int(time.time() // 86400)}"
        if not self.store.take(window, f"license:{identity.license}:{dataset}", int(policy["per_license_per_day"])):
            raise YumenError(Code.BUDGET_EXHAUSTED, f"license {identity.license} has used its "
                             f"{policy['per_license_per_day']} verifications on {dataset} today", hint="try again tomorrow")
        now = int(time.time() * 1000)
        order = {"request_id": request_id, "dataset": dataset, "operator": identity.name, "license": identity.license,
                 "purpose": purpose, "fields": sorted(fields), "want_mismatches": bool(want_mismatches),
                 "sealed_digest": sealed_digest(sealed), "issued_at_ms": now, "expires_at_ms": now + self._ttl_ms}
        payload = canonical_json(order)
        box: "queue.Queue[tuple[bytes, bytes]]" = queue.Queue(maxsize=1)
        key = f"{identity.name}/{request_id}"
        with self._lock:
            self._answers[key] = box
        try:
            with self.broker._links_lock:
                link = self.broker._links.get(found["connector"])
            if link is None:
                raise YumenError(Code.UNAVAILABLE, f"the connector of department {reg.department} is offline")
            link.outbox.put(OutgoingStewardship(kind="verify", payload=payload,
                                                signature=sign_payload(self.broker._key, ORDER_PURPOSE, payload),
                                                sealed=sealed))
            try:
                answer_payload, answer_signature = box.get(timeout=self._timeout)
            except queue.Empty:
                raise YumenError(Code.UNAVAILABLE, "the department did not answer in time", hint="try again") from None
        finally:
            with self._lock:
                self._answers.pop(key, None)
        verify_payload(link.certificate, ANSWER_PURPOSE, answer_payload, answer_signature)
        statement = json.loads(answer_payload)
        if statement.get("order_digest") != "sha256:" + hashlib.sha256(payload).hexdigest():
            raise YumenError(Code.VERIFICATION_FAILED, "the department's answer is for another order")
        index = self.broker.audit.tlog.append(StewardshipRecorded(
            kind="verification", dataset_id=dataset, dataset_version=str(statement.get("version", "")),
            department=reg.department, connector=link.identity.name, statement=statement,
            statement_signature=_b64(answer_signature),
            details={"operator": identity.name, "license": identity.license, "connector_certificate": link.identity.fingerprint},
        ))
        result = {"request_id": request_id, "answer": statement["answer"], "mismatched": statement.get("mismatched", []),
                  "message": statement.get("reason", ""), "log_index": index,
                  "statement": answer_payload.decode(), "signature": _b64(answer_signature)}
        self.store.put_answer(identity.name, request_id, json.dumps(result))
        return result

    def on_verified(self, link: Any, payload: bytes, signature: bytes) -> None:
        try:
            body = json.loads(payload)
        except ValueError:
            log.warning("malformed verification answer from %s", link.identity.name)
            return
        with self._lock:
            box = self._answers.get(f"{body.get('operator')}/{body.get('request_id')}")
        if box is not None:
            box.put((payload, signature))

    # -- destruction of expired versions ------------------------------------------------
    def on_destroyed(self, link: Any, payload: bytes, signature: bytes) -> int | None:
        """Log a connector's confirmation that an expired retained version was destroyed (once)."""
        verify_payload(link.certificate, DESTRUCTION_PURPOSE, payload, signature)
        body = json.loads(payload)
        dataset, version = str(body.get("dataset", "")), str(body.get("version", ""))
        owner = self.broker.store.get_dataset(dataset)
        if owner is None or owner[1] != link.identity.name:
            raise YumenError(Code.VERIFICATION_FAILED, f"{link.identity.name} does not serve {dataset}")
        if not self.store.mark_destroyed(dataset, version):
            return None
        return self.broker.audit.tlog.append(StewardshipRecorded(
            kind="version_destroyed", dataset_id=dataset, dataset_version=version, department=owner[0].department,
            connector=link.identity.name, statement=body, statement_signature=_b64(signature),
            details={"connector_certificate": link.identity.fingerprint},
        ))
