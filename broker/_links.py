"""The broker's side of its connectors' streams: a connector's hello (its certificate and the
datasets it registers), the queue of tickets and control messages for it, the start handshake
(a department asks before it reads any data), orders to stop, and the receipts it sends back.

:class:`ConnectorLinks` is mixed into :class:`~yumen.broker._core.Broker`; it uses the
broker's store, audit, ``recorded()`` transactions and job path (``_advance``, ``_release``,
``_dispatch_waiting``, ``_notify``, ``_lock_for``). Every change it makes to the catalog or a
job is written with the log entry that records it (see :mod:`yumen.broker._core`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import re
import threading
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError, echo
from yumen.identity import Identity, Role
from yumen.jobs import JobState
from yumen.tickets import Receipt

from yumen.broker._store import JobRecord, now_ms

if TYPE_CHECKING:
    from yumen.broker._audit import BrokerAudit
    from yumen.broker._store import Store

log = logging.getLogger("yumen.broker._core")  # one logger for the broker's job path

__all__ = ["ConnectorLink", "ConnectorLinks", "OutgoingControl", "OutgoingTicket"]

# A dataset version is the content digest of the data, as the log's entries require it.
_VERSION = re.compile(r"sha256:[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutgoingTicket:
    payload: bytes
    signature: bytes
    algorithm_source: bytes
    he_context: bytes = b""
    reexecution: bool = False  # an auditor's re-execution, not a job


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutgoingControl:
    """A message about a job already ticketed: the answer to a connector's start request
    (``kind="start"``), or an order to stop a job (``kind="stop"``)."""

    kind: str
    job_id: str
    dataset: str = ""
    go: bool = False
    reason: str = ""


class ConnectorLink:
    """One connected connector: identity, certificate and the queue of tickets for it."""

    def __init__(self, identity: Identity, certificate: x509.Certificate) -> None:
        self.identity = identity
        self.certificate = certificate
        self.outbox: "queue.Queue[OutgoingTicket | OutgoingControl | None]" = queue.Queue()
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        self.outbox.put(None)


class ConnectorLinks:
    """Connector links, registration, the start and stop handshakes and receipt intake (a mixin
    of :class:`~yumen.broker._core.Broker`)."""

    store: Store
    audit: BrokerAudit
    steward: Any
    _links: dict[str, ConnectorLink]
    _links_lock: threading.Lock

    def connect(
        self, identity: Identity, certificate: x509.Certificate, registrations: list[DatasetRegistration],
        refused: list[tuple[str, str]] | None = None,
    ) -> tuple[ConnectorLink, list[str]]:
        """Register a connector's datasets and open its ticket queue. Datasets that cannot be
        registered are refused one by one (``refused`` collects their ids and why); the others
        are served."""
        refused = refused if refused is not None else []
        if identity.role is not Role.CONNECTOR:
            raise YumenError(Code.PERMISSION_DENIED, "only connector certificates may open a connector stream")
        accepted: list[str] = []
        # the connector's certificate goes into the log once, with the first registration this
        # connection logs (or a re-registration of its current version when none changed), so
        # every receipt and statement it signs can be checked offline
        pem = ""
        if self.steward is not None and not self.steward.store.certificate_logged(identity.fingerprint):
            pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        for reg in registrations:
            if reg.department != identity.department:
                log.warning("connector %s offered dataset %s of department %s; refused",
                            identity.name, reg.id, reg.department)
                refused.append((reg.id, f"it belongs to department {reg.department}, not {identity.department}"))
                continue
            if not _VERSION.fullmatch(reg.version):
                log.warning("connector %s offered dataset %s without a content digest as its version; refused",
                            identity.name, reg.id)
                refused.append((reg.id, "its version is not a content digest (sha256:…)"))
                continue
            logged_pem = False
            with self.recorded():  # the catalog and the log change together, or neither
                existing = self.store.get_dataset(reg.id)
                if existing and existing[1] != identity.name:
                    log.warning("dataset %s already served by %s; %s refused", reg.id, existing[1], identity.name)
                    refused.append((reg.id, "another connector serves a dataset of that id"))
                    continue
                clash = self._namespace_clash(reg)
                if clash:
                    log.warning("dataset %s of %s refused: %s", reg.id, identity.name, clash)
                    refused.append((reg.id, clash))
                    continue
                if existing is None or existing[0].digest() != reg.digest():
                    self.store.put_dataset(reg, identity.name)
                    self.audit.dataset_registered(reg, identity, certificate_pem=pem)
                    logged_pem = bool(pem)
            if logged_pem:  # only once the entry carrying it is committed
                pem = self._certificate_logged(identity, pem)
            accepted.append(reg.id)
        if pem and accepted:
            current = self.store.get_dataset(accepted[0])
            if current is not None:
                with self.recorded():
                    self.audit.dataset_registered(current[0], identity, certificate_pem=pem)
                self._certificate_logged(identity, pem)
        link = ConnectorLink(identity, certificate)
        with self._links_lock:
            old = self._links.get(identity.name)
            self._links[identity.name] = link
        if old is not None:
            old.close()
        log.info("connector %s connected with %d datasets", identity.name, len(accepted))
        if self.steward is not None:
            self.steward.on_connect(identity.name)  # quality feedback that waited for it
        self._dispatch_waiting(identity.name)
        return link, accepted

    def _certificate_logged(self, identity: Identity, pem: str) -> str:
        """Remember that the log carries ``identity``'s certificate (after the append: a crash in
        between logs it twice, never not at all); returns "" (nothing left to log)."""
        if pem:
            self.steward.store.mark_certificate_logged(identity.fingerprint, identity.name)
        return ""

    def _namespace_clash(self, reg: DatasetRegistration) -> str:
        """Why ``reg`` cannot join its shared privacy-unit namespace, or "".

        Datasets on one shared namespace hold the same people and add up in one ledger
        account, so they must account loss the same way (pure ε, or ρ at the same δ).
        """
        unit = reg.privacy_unit
        if not unit.shared:
            return ""
        for other, _ in self.store.list_datasets():
            ou = other.privacy_unit
            if other.id != reg.id and ou.shared and ou.namespace == unit.namespace \
                    and (ou.accounting, ou.delta) != (unit.accounting, unit.delta):
                return (f"shared namespace {unit.namespace!r} is accounted as {ou.accounting.value} by dataset {other.id}; "
                        f"every dataset on it must account the same way (and with the same δ)")
        return ""

    def disconnect(self, link: ConnectorLink) -> None:
        with self._links_lock:
            if self._links.get(link.identity.name) is link:
                del self._links[link.identity.name]
        link.close()
        log.info("connector %s disconnected", link.identity.name)

    def _stop_tickets(self, job: JobRecord, reason: str) -> None:
        """Tell the connectors connected here that hold a started ticket of ``job`` to stop it."""
        for ds, st in self.store.ticket_states(job.job_id).items():
            if not st.started_ms:
                continue
            found = self.store.get_dataset(ds)
            with self._links_lock:
                link = self._links.get(found[1]) if found else None
            if link is not None:
                link.outbox.put(OutgoingControl(kind="stop", job_id=job.job_id, dataset=ds, reason=reason))

    def on_start(self, link: ConnectorLink, job_id: str, dataset: str) -> None:
        """A connector asks whether it may start ``job_id`` on ``dataset`` (before reading any
        data); the answer is recorded and sent back. Only the connector serving the dataset may
        ask; anything else is answered no."""
        found = self.store.get_dataset(dataset)
        if found is None or found[1] != link.identity.name:
            why = f"{link.identity.name} does not serve {echo(dataset)}"
        else:
            before = self.store.ticket_states(job_id).get(dataset)
            why = self.store.start_ticket(job_id, dataset, now_ms())
            if not why and before is not None and not before.started_ms:
                # the operator sees when a department started (never data-dependent: the
                # connector asks before it reads anything)
                self.store.set_state(job_id, JobState.RUNNING, f"started at department {found[0].department}",
                                     expect=JobState.RUNNING)
                self._notify()
        if why:
            log.info("start of job %s on %s refused: %s", echo(job_id), echo(dataset), why)
        link.outbox.put(OutgoingControl(kind="start", job_id=job_id[:200], dataset=dataset[:200], go=not why, reason=why))

    def on_receipt(self, link: ConnectorLink, payload: bytes, signature: bytes, ciphertext: bytes = b"") -> None:
        receipt = Receipt.verify(payload, signature, link.certificate)
        if receipt.ciphertext_digest:
            if "sha256:" + hashlib.sha256(ciphertext).hexdigest() != receipt.ciphertext_digest:
                raise YumenError(Code.VERIFICATION_FAILED, "the ciphertext does not match the digest in the receipt")
        elif ciphertext:
            raise YumenError(Code.VERIFICATION_FAILED, "a ciphertext came with a receipt that names none")
        if receipt.connector != link.identity.name:
            raise YumenError(Code.VERIFICATION_FAILED, f"receipt names connector {receipt.connector}, sent by {link.identity.name}")
        with self._lock_for(receipt.job_id):
            job = self.store.get_job(receipt.job_id)
            if job is None or receipt.dataset not in job.request["datasets"]:
                raise YumenError(Code.VERIFICATION_FAILED,
                                 f"receipt for unknown job/dataset {echo(receipt.job_id)}/{echo(receipt.dataset)}")
            owner = self.store.get_dataset(receipt.dataset)
            if owner is None or owner[1] != link.identity.name:
                raise YumenError(Code.VERIFICATION_FAILED, f"{link.identity.name} does not serve {echo(receipt.dataset)}")
            if receipt.dataset_version and not _VERSION.fullmatch(receipt.dataset_version):
                raise YumenError(Code.VERIFICATION_FAILED, "the receipt's dataset version is not a content digest")
            with self.recorded():  # receipt, refund and their entries together (module docstring)
                if receipt.dataset_version and receipt.dataset_version != owner[0].version:
                    # The department's data changed while it was connected: the new version is
                    # registered (and logged) before the execution that used it.
                    fresh = dataclasses.replace(owner[0], version=receipt.dataset_version)
                    self.store.put_dataset(fresh, link.identity.name)
                    self.audit.dataset_registered(fresh, link.identity)
                if not self.store.put_partial(job.job_id, receipt.dataset, {
                    "payload": payload.decode(), "signature": signature.hex(),
                }, ciphertext):
                    log.info("duplicate receipt for %s/%s ignored", receipt.job_id, receipt.dataset)
                    return
                index = self.audit.job_executed(receipt, payload, signature, link.identity)
                complete = self._advance(job, receipt)
            self._notify(job.job_id)
            if complete:
                self._release(job.job_id, index)
