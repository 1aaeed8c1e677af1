"""Audit re-execution: an auditor asks each department of a logged job to run it again on the
same data version, and the connector answers only whether its commitment matches. Nothing is
released and no budget is spent.

:class:`Reexecution` is mixed into :class:`~yumen.broker._core.Broker`; it sends tickets on
the broker's connector links (:mod:`yumen.broker._links`).
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError, echo
from yumen.identity import Identity, Role, verify_payload
from yumen.tickets import Receipt

from yumen.broker._links import ConnectorLink

if TYPE_CHECKING:
    from yumen.broker._store import Store

__all__ = ["Reexecution", "dataset_version_of"]


class Reexecution:
    """Re-execution requests and the connectors' reports (a mixin of the broker)."""

    store: Store
    _links: dict[str, ConnectorLink]
    _links_lock: threading.Lock
    _reexecutions: dict[tuple[str, str], "queue.Queue[tuple[bytes, bytes]]"]

    def reexecute(self, identity: Identity, job_id: str, *, timeout: float = 300) -> list[dict[str, Any]]:
        """Ask each department of a logged job to run it again on the same data version.

        Nothing is released and no budget is spent: the connector recomputes the pre-noise
        output with the salt it kept, and answers only whether its commitment matches.
        """
        if identity.role not in (Role.AUDITOR, Role.ADMIN):
            raise YumenError(Code.PERMISSION_DENIED, "re-execution is for auditors and administrators")
        job = self.store.get_job(job_id)
        if job is None:
            raise YumenError(Code.NOT_FOUND, f"no job {echo(job_id)}")
        partials = self.store.partials(job_id)
        if not partials:
            raise YumenError(Code.JOB_NOT_READY, f"job {job_id} has not been executed anywhere")
        waiting = []
        out = []
        for dataset in sorted(partials):
            found = self.store.get_dataset(dataset)
            receipt = Receipt.from_dict(json.loads(partials[dataset]["payload"]))
            with self._links_lock:
                link = self._links.get(found[1]) if found else None
            if link is None or found is None:
                out.append({"dataset": dataset, "department": receipt.department, "error": "the department's connector is offline"})
                continue
            ticket = self._ticket_for(job, dataset_version_of(found[0], receipt), found[1], reexecution=True)
            answer: "queue.Queue[tuple[bytes, bytes]]" = queue.Queue(maxsize=1)
            self._reexecutions[(job_id, dataset)] = answer
            link.outbox.put(ticket)
            waiting.append((dataset, receipt, link, answer))
        deadline = time.monotonic() + timeout
        for dataset, receipt, link, answer in waiting:
            try:
                payload, signature = answer.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                out.append({"dataset": dataset, "department": receipt.department, "error": "no answer in time"})
                continue
            finally:
                self._reexecutions.pop((job_id, dataset), None)
            verify_payload(link.certificate, "reexecution-report", payload, signature)
            report = json.loads(payload)
            out.append({**report, "report": payload, "signature": signature})
        return out

    def on_reexecuted(self, link: ConnectorLink, payload: bytes, signature: bytes) -> None:
        """A connector's re-execution report; anything unreadable is bad input (the caller
        logs it and the connector's stream goes on)."""
        from yumen.canonical import parse_json

        report = parse_json(payload, what="the re-execution report")
        if not isinstance(report, dict) or not isinstance(report.get("job_id"), str) \
                or not isinstance(report.get("dataset"), str):
            raise YumenError(Code.INVALID_ARGUMENT, "a re-execution report names its job_id and dataset as strings")
        answer = self._reexecutions.get((report["job_id"], report["dataset"]))
        if answer is not None:
            answer.put((payload, signature))



def dataset_version_of(reg: DatasetRegistration, receipt: Receipt) -> DatasetRegistration:
    """The registration as it was when the receipt's job ran (its logged data version)."""
    return dataclasses.replace(reg, version=receipt.dataset_version or reg.version)

