"""The broker's job path, free of gRPC: decide, reserve, ticket, collect, combine, release.

The broker never sees a raw row or a pre-noise value: it forwards signed tickets to the
department's connector and receives signed receipts carrying only released values.

Ordering and failure: every change of the ledger, the catalog, licenses or the policy in
force is written together with the log entry that records it, in one transaction on the
database that holds both (:meth:`Broker.recorded`): a job, its budget reservation and its
decision; a cancellation, its refund and its entry; a receipt, its refund (if refused) and
its ``job_executed`` entry; a registration and its ``dataset_registered``. These
transactions hold the log's write lock, which every broker replica on the same database
shares, so the log lists ledger changes in exactly the order the ledger saw them and an
auditor's replay sees the budget as the broker saw it when it decided (a refusal for budget
is logged only after every reservation that caused it). A crash loses both halves or
neither. Budget is never refunded once the department may have touched the data; it is
given back only for a job cancelled before any ticket ran, or refused by the department
(which refuses before it reads anything, and signs that).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import queue
import re
import threading
import time
from decimal import Decimal
from fractions import Fraction
from typing import Any, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError, echo
from yumen.identity import Identity, Role, sign_payload, verify_payload
from yumen.jobs import Aggregate, JobRequest, JobState, format_epsilon
from yumen.loss import Accounting, epsilon_of_rho
from yumen.policy import (
    Decision,
    DecisionRequest,
    License,
    PolicyBundle,
    PolicyEngine,
    Reservation,
    describe_amount,
    refusal,
    reservation_for,
)
from yumen.tickets import Receipt, Ticket

from yumen.broker._assembly import combine, needs_counts, needs_parts
from yumen.broker._audit import BrokerAudit, LogSummary
from yumen.broker._store import EventRecord, JobRecord, Store, now_ms

log = logging.getLogger(__name__)

__all__ = ["Broker", "ConnectorLink", "OutgoingControl", "OutgoingTicket", "EXPIRED", "OVERDUE"]

# The only words an operator gets about a job that timed out. They are fixed: when a ticket
# expired or a job overran depends on the department's connector, never on the data.
EXPIRED = ("the ticket expired before the department's connector started the job (the connector may be offline, "
           "or unable to verify the broker's tickets); nothing was released and the reserved budget was returned")
OVERDUE = ("the job did not finish within its limits at the department; nothing was released and the budget stays "
           "spent (the department may have read the data)")

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


class Broker:
    def __init__(
        self,
        *,
        broker_id: str,
        store: Store,
        policy: PolicyEngine,
        audit: BrokerAudit,
        signing_key: ec.EllipticCurvePrivateKey,
        ticket_ttl_s: int = 600,
        max_queued_per_license: int = 0,
    ) -> None:
        self.id = broker_id
        self.max_queued_per_license = max_queued_per_license  # 0: no limit
        self.store = store
        self._policy = policy
        self.audit = audit
        self._key = signing_key
        self._ttl_ms = ticket_ttl_s * 1000
        self._links: dict[str, ConnectorLink] = {}
        self._links_lock = threading.Lock()
        # each watcher's wake-up, by job: a change wakes only the watchers of its job (a flood of
        # jobs must not make every watcher re-read the store on every change)
        self._watchers: dict[str, set[threading.Event]] = {}
        self._watchers_lock = threading.Lock()
        self._job_locks: dict[str, threading.Lock] = {}
        self._job_locks_guard = threading.Lock()
        self._reexecutions: dict[tuple[str, str], "queue.Queue[tuple[bytes, bytes]]"] = {}
        self.steward: Any = None  # yumen.broker._stewardship.BrokerStewardship, set by build_broker
        from yumen.broker._billing import BrokerBilling

        self.billing = BrokerBilling(self)  # the catalogue, holds and settlements (docs/billing.md)

    # -- policy and licenses (see also yumen.broker._admin) -------------------------
    @property
    def policy(self) -> PolicyEngine:
        return self._policy

    def set_policy(self, bundle: PolicyBundle, *, changed_by: str, replaces: str) -> PolicyEngine:
        """Validate, store, log and swap in a new policy version: a compare-and-set on the
        version it replaces.

        ``replaces`` must name the version in force (in the shared state, not in this
        process's memory), or the change is refused with ``CONFLICT``: two administrators, or
        two replicas, changing policy at once cannot both build on the same version, so the
        logged chain of versions never forks. A request sees the old or the new engine, never
        half of one: the engine is built and validated completely before the swap.
        """
        engine = PolicyEngine(bundle)  # raises CONFIG with the reason when invalid
        with self.recorded():
            current = self.store.current_policy_version()
            if replaces != current:
                raise YumenError(
                    Code.CONFLICT,
                    f"the policy in force is {current or 'none'}, not {echo(replaces) if replaces else 'none'} "
                    "that this change replaces; someone changed it meanwhile",
                    hint="read it again with `yumen admin policy show` and set yours on top of it",
                )
            if engine.version != current:
                self.store.put_policy_version(engine.version, bundle.to_dict(), current=True)
                self.audit.policy_changed(engine, previous=current, changed_by=changed_by)
        self._policy = engine
        return engine

    def _policy_in_force(self) -> PolicyEngine:
        """The engine of the version the shared state names as in force (another replica may
        have changed it); cheap when it is the one this process already has."""
        current = self.store.current_policy_version()
        engine = self._policy
        if current and current != engine.version:
            stored = self.store.policy_version(current)
            if stored is not None:
                engine = PolicyEngine(PolicyBundle(**stored))
                self._policy = engine
        return engine

    @contextlib.contextmanager
    def recorded(self) -> Iterator[Any]:
        """One transaction for a state change and the log entries that record it (see the
        module docstring); the log's view is refreshed after the commit."""
        with self.store.atomic() as conn, self.audit.joined(conn):
            yield conn
        self.audit.tlog.refresh()

    def license(self, license_id: str) -> License | None:
        record = self.store.get_license(license_id)
        return License.from_dict(record) if record else None

    def decide(self, identity: Identity, request: JobRequest, reg: DatasetRegistration, *, at: dt.datetime | None = None,
               engine: PolicyEngine | None = None) -> Decision:
        return (engine or self._policy).decide(
            DecisionRequest(
                license=identity.license, department=reg.department, dataset=reg.id, level=reg.level.value,
                tier=request.tier.value, purpose=request.purpose.value, epsilon=request.epsilon,
                price_class=reg.price_class, encrypted=bool(request.he_context),
                at=at or dt.datetime.now(dt.timezone.utc),
            ),
            self.license(identity.license),
        )

    # -- identity ------------------------------------------------------------------------
    def identify(self, context: Any) -> Identity:
        """The caller's identity from its verified certificate, unless that certificate was revoked.

        The registry is read on every call, so a revocation takes effect at once.
        """
        from yumen.rpc import caller

        who = caller(context)
        revoked = self.store.revoked(who.fingerprint)
        if revoked is not None:
            raise YumenError(
                Code.UNAUTHENTICATED,
                f"the certificate of {who.name} was revoked: {revoked['reason'] or 'no reason given'}",
                hint="ask the data authority for a new certificate",
            )
        return who

    def revoke_certificate(self, by: Identity, fingerprint: str, *, name: str, reason: str) -> dict[str, Any]:
        if by.role is not Role.ADMIN:
            raise YumenError(Code.PERMISSION_DENIED, "only administrator certificates may revoke certificates")
        if not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
            raise YumenError(Code.INVALID_ARGUMENT, "a certificate fingerprint is 64 lowercase hex digits (SHA-256 of the DER)")
        record = self.store.revoke_certificate(fingerprint, name=name, reason=reason, by=by.name)
        with self._links_lock:
            links = [link for link in self._links.values() if link.identity.fingerprint == fingerprint]
        for link in links:  # a connector holding the certificate is cut off now
            self.disconnect(link)
        log.warning("certificate %s (%s) revoked by %s", fingerprint[:16], name, by.name)
        return record

    # -- catalog -----------------------------------------------------------------
    def catalog(self) -> list[tuple[DatasetRegistration, bool]]:
        with self._links_lock:
            online = set(self._links)
        return [(reg, conn in online) for reg, conn in self.store.list_datasets()]

    def dataset(self, dataset_id: str) -> tuple[DatasetRegistration, bool]:
        found = self.store.get_dataset(dataset_id)
        if found is None:
            raise YumenError(
                Code.NOT_FOUND,
                f"no dataset {echo(dataset_id)} in the catalog",
                hint="list the catalog with `yumen catalog list`",
            )
        reg, conn = found
        with self._links_lock:
            return reg, conn in self._links

    # -- connectors --------------------------------------------------------------
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

    # -- jobs --------------------------------------------------------------------
    def _lock_for(self, job_id: str) -> threading.Lock:
        with self._job_locks_guard:
            return self._job_locks.setdefault(job_id, threading.Lock())

    def submit(self, identity: Identity, request: JobRequest) -> JobRecord:
        if identity.role is not Role.OPERATOR:
            raise YumenError(Code.PERMISSION_DENIED, "only operator certificates may submit jobs")
        if request.he_context:
            from yumen.privacy import he_check_public_context

            he_check_public_context(request.he_context)  # size, parameters, and no secret key
        existing = self.store.get_job(request.job_id)
        if existing and existing.operator == identity.name and existing.request_digest == request.digest():
            return existing  # idempotent retry: no second decision, no second reservation
        regs = [self.dataset(d)[0] for d in request.datasets]
        self._validate_combinable(request, regs)
        for reg in regs:
            self._validate_work(request, reg)
        # Decide, reserve and log in one transaction under the log's write lock: the decision
        # reads the license and the policy in force as they are now, and the log records it
        # in the order the ledger saw it (module docstring).
        refusal: YumenError | None = None
        created_now = False
        with self.recorded() as conn:
            if self.max_queued_per_license:
                queued = self.store.count_jobs(identity.license, JobState.PENDING, JobState.RUNNING)
                if queued >= self.max_queued_per_license:
                    raise YumenError(
                        Code.LIMIT_EXCEEDED,
                        f"license {identity.license} has {queued} jobs queued or running; the limit is "
                        f"{self.max_queued_per_license}",
                        hint="wait for some to finish (`yumen job watch`), then submit again",
                    )
            engine = self._policy_in_force()
            decisions: list[tuple[DatasetRegistration, Decision]] = []
            for reg in regs:
                decision = self.decide(identity, request, reg, engine=engine)
                if not decision.allowed:
                    self.audit.job_decided(request, identity, reg, decision)
                    refusal = YumenError(Code.POLICY_DENIED, f"denied by policy: {decision.reason}")
                    break
                grouped = request.query is not None and (
                    bool(request.query.group_by) or request.query.aggregate is Aggregate.HISTOGRAM)
                if decision.obligations and decision.obligations.min_group_size and request.he_context and grouped:
                    raise YumenError(
                        Code.INVALID_ARGUMENT,
                        f"dataset {reg.id} requires groups of at least {decision.obligations.min_group_size}, which the "
                        "broker cannot check on encrypted results",
                        hint="drop --he or the grouping",
                    )
                decisions.append((reg, decision))
            if refusal is None:
                created = now_ms()
                reg0, dec0 = decisions[0]
                reservations = [self._reservation(identity.license, reg, request.epsilon, dec) for reg, dec in decisions]
                record = JobRecord(
                    job_id=request.job_id, operator=identity.name, license=identity.license,
                    request_digest=request.digest(), request=request.to_dict(),
                    algorithm_source=request.algorithm.source if request.algorithm else b"",
                    state=JobState.PENDING, message="accepted; waiting for the departments' connectors",
                    decision={**dec0.to_dict(), "price_class": reg0.price_class, "level": max(r.level.value for r in regs),
                              "price": str(sum((d.price for _, d in decisions), Decimal(0))),
                              "per_dataset": {r.id: {**d.to_dict(), "budget": budget_facts(res)}
                                              for (r, d), res in zip(decisions, reservations)}},
                    created_ms=created, updated_ms=created, he_context=request.he_context,
                )
                # the quote at the catalogue in force now, kept with the job: it is never repriced
                record.decision["charge"] = self.billing.hold(conn, record)
                try:
                    record, created_now = self.store.create_job(record, reservations)
                except YumenError as e:
                    if e.code is not Code.BUDGET_EXHAUSTED:
                        raise
                    self.audit.job_over_budget(request, identity, decisions, reservations, e.message)
                    refusal = e
                else:
                    if created_now:
                        self.audit.job_allowed(request, identity, decisions, reservations)
                        self.billing.log_hold(record)
        if refusal is not None:
            raise refusal
        if created_now:
            self._notify(record.job_id)
            self._dispatch(record)
        return self.store.get_job(record.job_id) or record

    def _reservation(self, license_id: str, reg: DatasetRegistration, epsilon: Fraction, dec: Decision,
                     at: dt.datetime | None = None) -> Reservation:
        if dec.obligations is None:
            raise YumenError(Code.INTERNAL, "an allowed decision carries obligations")
        return reservation_for(reg, license=license_id, epsilon=epsilon, obligations=dec.obligations,
                               at=at or dt.datetime.now(dt.timezone.utc))

    def explain(self, identity: Identity, request: JobRequest) -> dict[str, Any]:
        """What :meth:`submit` would decide, with budget and price, touching nothing.

        The budget part uses the same rules and wording as a reservation (``yumen.policy``'s
        budget module): every account the job would charge, what is left before and after.
        """
        if identity.role is not Role.OPERATOR:
            raise YumenError(Code.PERMISSION_DENIED, "only operator certificates may ask for explanations")
        (ds,) = request.datasets[:1] or ("",)
        reg = self.dataset(ds)[0]
        self._validate_work(request, reg)
        decision = self.decide(identity, request, reg)
        unit = reg.privacy_unit
        out: dict[str, Any] = {
            "allowed": decision.allowed, "reason": decision.reason, "gate": decision.gate,
            "matched_rule": decision.rule, "policy_version": decision.policy_version,
            "obligations": decision.obligations.to_dict() if decision.obligations else {},
            "epsilon_requested": format_epsilon(request.epsilon), "price": "0.00",
            "epsilon_remaining": "", "epsilon_remaining_after": "", "runs_remaining": 0, "period": "",
            "accounting": unit.accounting.value, "delta": reg.privacy_unit.to_dict().get("delta", ""),
            "cost": "", "accounts": [],
        }
        quote = self.billing.quote(product=reg.price_class, purpose=request.purpose.value, epsilon=request.epsilon,
                                   datasets=len(request.datasets) or 1)
        out.update(price=quote["amount"], quote=quote)
        if decision.obligations is None:
            return out
        r = self._reservation(identity.license, reg, request.epsilon, decision)
        out["cost"] = describe_amount(r.amount, r.accounting, r.delta)
        first_refusal = None
        for limit in r.limits:
            spent, runs = self.store.balance(limit.account)
            left = max(limit.cap - spent, Fraction(0))
            after = max(left - r.amount, Fraction(0))
            out["accounts"].append({
                "kind": limit.kind, "window": limit.account[2], "cap": describe_amount(limit.cap, r.accounting, r.delta),
                "remaining": describe_amount(left, r.accounting, r.delta),
                "remaining_after": describe_amount(after, r.accounting, r.delta),
                "runs_remaining": max(limit.max_runs - runs, 0) if limit.max_runs else -1,
            })
            if limit.kind == "license":
                # in ε: under zCDP, the largest ε a job could still ask for
                as_eps = (lambda x: x) if unit.accounting is Accounting.PURE else (
                    lambda x: epsilon_of_rho(x, r.delta, round_up=False))
                out.update(period=limit.account[2],
                           epsilon_remaining=format_epsilon(as_eps(left)) if as_eps(left) else "0",
                           epsilon_remaining_after=format_epsilon(as_eps(after)) if as_eps(after) else "0",
                           runs_remaining=max(limit.max_runs - runs, 0))
            first_refusal = first_refusal or refusal(r, limit, spent, runs)
        if decision.allowed and first_refusal is not None:
            out.update(allowed=False, gate="budget", reason=first_refusal.message)
        return out

    @staticmethod
    def _validate_combinable(request: JobRequest, regs: list[DatasetRegistration]) -> None:
        """Partial results of several departments add up only when their layouts agree."""
        if len(regs) < 2 or request.query is None:
            return
        q = request.query
        for name in (q.column, q.group_by):
            if not name:
                continue
            shapes = {(r.column(name).type, r.column(name).categories, r.column(name).unit) for r in regs}
            if len(shapes) > 1:
                raise YumenError(
                    Code.INVALID_ARGUMENT,
                    f"column {name!r} is declared differently in {', '.join(r.id for r in regs)}; "
                    "their results cannot be combined",
                    hint="combine datasets registered with the same schema",
                )

    def _validate_work(self, request: JobRequest, reg: DatasetRegistration) -> None:
        """Refuse a query the registration does not support, before any decision or budget."""
        if request.query is not None:
            from yumen.privacy import QuerySpec, validate_query

            validate_query(reg, QuerySpec.from_query(request.query))

    def _ticket_for(self, job: JobRecord, reg: DatasetRegistration, connector: str, *,
                    reexecution: bool = False) -> OutgoingTicket:
        """The signed ticket for one dataset of ``job``; a re-execution request is the same ticket
        signed for the purpose "reexecution", so it can never run as a job."""
        req = job.request
        work: dict[str, Any] = {"query": req["query"]} if "query" in req else {"algorithm": req["algorithm"]}
        if "he_context" in req:
            work["he_context"] = req["he_context"]
        if "query" in req and needs_parts(job):
            work["partial"] = "sum+count"
        if "query" in req and needs_counts(job):
            work["counts"] = True
        decision = job.decision.get("per_dataset", {}).get(reg.id, job.decision)
        budget = decision.get("budget") or {}
        if budget.get("accounting") == "zcdp":
            # the ρ reserved for this dataset; the connector checks it against the ε and its own δ
            work["budget"] = {"accounting": "zcdp", "amount": budget["amount"], "delta": budget["delta"]}
        ticket = Ticket(
            job_id=job.job_id, broker=self.id, connector=connector, department=reg.department,
            dataset=reg.id, dataset_version=reg.version, operator=job.operator, license=job.license,
            tier=req["tier"], purpose=req["purpose"], epsilon=Fraction(req["epsilon"]), work=work,
            obligations=decision.get("obligations") or {}, policy_version=decision["policy_version"],
            rule=decision.get("rule", ""), issued_at_ms=now_ms(),
            # fixed when the job's first ticket on this dataset is issued: a re-issue (the
            # connector reconnected, another replica sends it) never extends it
            expires_at_ms=(now_ms() + self._ttl_ms if reexecution
                           else self.store.ticket_expiry(job.job_id, reg.id, now_ms() + self._ttl_ms)),
        )
        if reexecution:
            payload = ticket.payload()
            return OutgoingTicket(payload=payload, signature=sign_payload(self._key, "reexecution", payload),
                                  algorithm_source=job.algorithm_source, reexecution=True)
        payload, sig = ticket.sign(self._key)
        return OutgoingTicket(payload=payload, signature=sig, algorithm_source=job.algorithm_source,
                              he_context=job.he_context)

    def _license_still_valid(self, job: JobRecord) -> str:
        """Why a queued job's license no longer covers it (revoked, suspended, expired), or ""."""
        lic = self.license(job.license)
        if lic is None:
            return f"license {job.license} is no longer registered"
        return lic.refusal(purpose=job.request["purpose"], level=job.decision["level"], at=dt.datetime.now(dt.timezone.utc))

    def sweep_queued(self) -> int:
        """Cancel queued jobs whose license lapsed (expired, suspended, revoked) while they waited.

        Run periodically by the server, so a job waiting for an offline connector does not
        stay pending after its license ended. Returns how many jobs were cancelled.
        """
        cancelled = 0
        for job in self.store.jobs_in_state(JobState.PENDING):
            why = self._license_still_valid(job)
            if why:
                self.cancel_unstarted(job, why)
                cancelled += 1
            else:
                # With replicas a job may have been accepted by another broker while its
                # connector is connected here: send it on.
                self._dispatch(job)
        return cancelled

    def cancel_unstarted(self, job: JobRecord, reason: str) -> None:
        """Cancel a job no connector has started: its budget is given back, and it is logged.

        The move from pending to cancelled is a compare-and-set in the store, so with several
        broker replicas a job is either dispatched or cancelled, never both. (A crash after the
        move is completed by :meth:`recover`.)
        """
        with self._lock_for(job.job_id):
            with self.recorded():  # the state, the refund and the entry together
                if self.store.set_state(job.job_id, JobState.CANCELLED, f"cancelled before it started: {reason}",
                                        expect=JobState.PENDING) is None:
                    return
                refunded = [ds for ds, _ in self.store.release_reservation(job.job_id, keep_started=True)]
                self.audit.job_cancelled(job, reason, refunded=refunded)
                self.billing.close(job)  # nothing ran: the hold is released
            self._notify(job.job_id)

    # -- cancellation, ticket expiry and the start handshake ----------------------------
    def cancel(self, identity: Identity, job_id: str) -> JobRecord:
        """An operator cancels its own queued or running job.

        Nothing of it is ever released. Each dataset's budget is given back exactly when no
        department was let start the job there (:meth:`on_start`); where one was, the data
        may have been read, so the budget stays spent: otherwise a cancel would be a free
        look at the data through anything the job's run let out before it was stopped
        (docs/privacy.md). Connectors holding a started ticket are told to stop it. The
        state change, the refund and the log entry commit together.
        """
        if identity.role is not Role.OPERATOR:
            raise YumenError(Code.PERMISSION_DENIED, "only the operator who submitted a job may cancel it",
                             hint="an administrator stops a license's queued jobs with `yumen admin license suspend`")
        job = self._own_job(identity, job_id)
        with self._lock_for(job.job_id):
            with self.recorded():
                for _ in range(5):  # a dispatch may move it from pending to running meanwhile
                    current = self.store.get_job(job.job_id)
                    if current is None or current.state.final:
                        break
                    states = self.store.ticket_states(job.job_id)
                    started = sorted(ds for ds, st in states.items() if st.started_ms and not st.released)
                    refunded_now = [ds for ds, st in states.items() if not st.started_ms and not st.released]
                    message = ("cancelled by its operator before any department started it; nothing was released "
                               "and the reserved budget was returned") if not started else (
                        f"cancelled by its operator after it started on {', '.join(started)}; nothing is released, "
                        "and the budget stays spent there (the data may have been read)"
                        + ("; the budget of the datasets it had not started on was returned" if refunded_now else ""))
                    if self.store.set_state(job.job_id, JobState.CANCELLED, message, expect=current.state) is None:
                        continue
                    refunded = [ds for ds, _ in self.store.release_reservation(job.job_id, keep_started=True)]
                    self.audit.job_cancelled(current, "cancelled by its operator", gate="operator",
                                             refunded=refunded, by=identity.name)
                    self.billing.close(current)  # settled on metering already received, else the hold is released
                    break
                else:
                    raise YumenError(Code.CONFLICT, f"job {job.job_id} kept changing state; cancel it again")
            final = self.store.get_job(job.job_id) or job
        if final.state is not JobState.CANCELLED:
            raise YumenError(Code.CONFLICT, f"job {job.job_id} already {final.state.value}; there is nothing to cancel",
                             hint=f"see it with `yumen job status {job.job_id}`")
        self._notify()
        self._stop_tickets(final, "the operator cancelled the job")
        return final

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

    def _run_limit_ms(self, job: JobRecord) -> int:
        """How long a started ticket may take before its job is failed as overdue: the ticket's
        lifetime (which covers the department's allowance) plus twice the algorithm's time limit."""
        algo = job.request.get("algorithm") or {}
        return self._ttl_ms + int(2000 * float(algo.get("timeout_s", 0) or 0))

    def expire_tickets(self) -> int:
        """Fail running jobs a department never started before their ticket expired, or that a
        started department did not finish within the job's limits. Run by the server's sweeper.

        The operator is told one fixed message (:data:`EXPIRED`, :data:`OVERDUE`). Datasets no
        department started get their reserved budget back exactly; started ones keep it. The
        state change, the refund and the log entry commit together; the auditor's replay checks
        that every refunded dataset's ticket had expired and never ran.
        """
        failed = 0
        for job in self.store.jobs_in_state(JobState.RUNNING):
            states = self.store.ticket_states(job.job_id)
            done = set(self.store.partials(job.job_id))
            now = now_ms()
            waiting = {ds: st for ds, st in states.items() if ds not in done and not st.released}
            expired = [ds for ds, st in waiting.items() if st.expires_ms and not st.started_ms and now > st.expires_ms]
            overdue = [ds for ds, st in waiting.items() if st.started_ms and now > st.started_ms + self._run_limit_ms(job)]
            if not expired and not overdue:
                continue
            with self._lock_for(job.job_id):
                with self.recorded():
                    current = self.store.get_job(job.job_id)
                    if current is None or current.state is not JobState.RUNNING:
                        continue
                    kept = [ds for ds, st in waiting.items() if st.started_ms]
                    message = OVERDUE if kept else EXPIRED
                    if self.store.set_state(job.job_id, JobState.FAILED, message, expect=JobState.RUNNING) is None:
                        continue
                    refunded = [ds for ds, _ in self.store.release_reservation(job.job_id, keep_started=True)]
                    self.audit.job_cancelled(current, message, gate="expired", refunded=refunded, by=self.id,
                                             expires={ds: st.expires_ms for ds, st in states.items()})
                    self.billing.close(current)
                failed += 1
            log.warning("job %s failed: %s (expired %s, overdue %s)", job.job_id,
                        "overdue" if overdue else "ticket expired", ",".join(expired), ",".join(overdue))
            self._notify()
            self._stop_tickets(job, "the job's ticket expired")
        return failed

    def _dispatch(self, job: JobRecord) -> None:
        """Send the job's tickets to those of its connectors that are connected here."""
        if job.state is JobState.PENDING:
            why = self._license_still_valid(job)
            if why:
                self.cancel_unstarted(job, why)
                return
        partials = self.store.partials(job.job_id)
        targets = []
        for ds in job.request["datasets"]:
            found = self.store.get_dataset(ds)
            if ds in partials or found is None:
                continue
            with self._links_lock:
                link = self._links.get(found[1])
            if link is not None:
                targets.append((found[0], found[1], link))
        if not targets:
            return
        if job.state is JobState.PENDING:
            departments = ", ".join(sorted({reg.department for reg, _, _ in targets}))
            moved = self.store.set_state(job.job_id, JobState.RUNNING, f"ticket sent to department {departments}",
                                         expect=JobState.PENDING)
            if moved is None:
                current = self.store.get_job(job.job_id)
                if current is None or current.state is not JobState.RUNNING:
                    return  # cancelled (or finished) meanwhile, perhaps by another replica
            self._notify(job.job_id)
        for reg, conn, link in targets:
            link.outbox.put(self._ticket_for(job, reg, conn))

    def _dispatch_waiting(self, connector: str) -> None:
        for job in self.store.jobs_in_state(JobState.PENDING, JobState.RUNNING):
            self._dispatch(job)

    def _notify(self, job_id: str = "") -> None:
        """Wake the watchers of ``job_id`` (of every job when it is empty)."""
        with self._watchers_lock:
            wakes = list(self._watchers.get(job_id, ())) if job_id else [w for ws in self._watchers.values() for w in ws]
        for wake in wakes:
            wake.set()

    def _own_job(self, identity: Identity, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job is None or (identity.role is Role.OPERATOR and job.operator != identity.name):
            raise YumenError(Code.NOT_FOUND, f"no job {echo(job_id)} of yours", hint="check the job id")
        if identity.role not in (Role.OPERATOR, Role.ADMIN, Role.AUDITOR):
            raise YumenError(Code.PERMISSION_DENIED, "jobs are visible to their operator, auditors and administrators")
        return job

    def get_job(self, identity: Identity, job_id: str) -> JobRecord:
        return self._own_job(identity, job_id)

    def watch(self, identity: Identity, job_id: str, *, stop: threading.Event | None = None) -> Iterator[EventRecord]:
        self._own_job(identity, job_id)
        seq = 0
        wake = threading.Event()
        with self._watchers_lock:
            self._watchers.setdefault(job_id, set()).add(wake)
        try:
            while True:
                wake.clear()  # before the read: a change made after it wakes the wait below
                for ev in self.store.events(job_id, seq):
                    seq = ev.seq
                    yield ev
                    if ev.state.final:
                        return
                if stop is not None and stop.is_set():
                    return
                # the timeout also catches changes made by another broker replica
                wake.wait(timeout=0.5)
        finally:
            with self._watchers_lock:
                mine = self._watchers.get(job_id)
                if mine is not None:
                    mine.discard(wake)
                    if not mine:
                        del self._watchers[job_id]

    def result(self, identity: Identity, job_id: str) -> JobRecord:
        job = self._own_job(identity, job_id)
        if job.state is JobState.SUCCEEDED:
            return job
        if job.state.final:
            raise YumenError(Code.JOB_FAILED, f"job {job_id} {job.state.value}: {job.message}")
        raise YumenError(Code.JOB_NOT_READY, f"job {job_id} is {job.state.value}", hint="wait with `yumen job watch`")

    # -- receipts ----------------------------------------------------------------
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

    def _advance(self, job: JobRecord, receipt: Receipt) -> bool:
        """Move a job on after one of its receipts was stored and logged (inside the same
        transaction); True when every dataset has answered and the result can be assembled."""
        dept = receipt.department
        if receipt.status == "refused":
            # The connector refuses before it reads any data, so that dataset's budget is given
            # back (datasets of the same job that did run keep their charge), even when the job
            # already ended otherwise: the auditor's replay gives it back too.
            self.store.release_reservation(job.job_id, dataset=receipt.dataset)
        current = self.store.get_job(job.job_id)
        if job.state.final or current is None or current.state.final:
            return False
        if receipt.status == "refused":
            self.store.set_state(job.job_id, JobState.REFUSED, f"refused by department {dept}: {receipt.error}")
            self.billing.close(job)  # settled for datasets that ran, released when none did
            return False
        if receipt.status == "failed":
            self.store.set_state(job.job_id, JobState.FAILED, f"failed at department {dept}: {receipt.error}")
            self.billing.close(job)  # the department read data: settled on its metering
            return False
        partials = self.store.partials(job.job_id)
        if set(partials) != set(job.request["datasets"]):
            self.store.set_state(job.job_id, JobState.RUNNING, f"partial result from department {dept}")
            return False
        return True

    def _release(self, job_id: str, index: int) -> None:
        """Assemble the result of a job whose every dataset answered, then log its release and
        mark it succeeded in one transaction (a compare-and-set: once, across replicas)."""
        job = self.store.get_job(job_id)
        if job is None or job.state.final:
            return
        partials = self.store.partials(job_id)
        try:
            result = combine(job, [(Receipt.from_dict(json.loads(p["payload"])), p["ciphertext"])
                                   for p in partials.values()])
        except YumenError as e:
            result, failure = None, e
        with self.recorded():
            current = self.store.get_job(job_id)
            if current is None or current.state.final:
                return  # another replica finished it meanwhile
            if result is None:
                self.store.set_state(job_id, JobState.FAILED, f"the partial results could not be combined: {failure.message}")
                self.billing.close(current)
            else:
                bill = self.billing.close(current)
                if bill is not None:
                    result["bill"] = bill
                result["log_index_executed"] = index
                result["log_index"] = self.audit.job_released(job, result)
                self.store.set_state(job_id, JobState.SUCCEEDED, "result released", result=result)
        self._notify(job_id)

    def complete_stalled(self, *, older_than_ms: int = 30_000) -> int:
        """Release jobs whose every dataset answered but whose result was never assembled (a
        broker died between the two). Jobs changed in the last ``older_than_ms`` are left
        alone: another replica may be assembling them right now."""
        done = 0
        for job in self.store.jobs_in_state(JobState.PENDING, JobState.RUNNING):
            if now_ms() - job.updated_ms < older_than_ms:
                continue
            partials = self.store.partials(job.job_id)
            if partials and set(partials) == set(job.request["datasets"]):
                with self._lock_for(job.job_id):
                    self._release(job.job_id, 0)
                done += 1
        return done

    # -- audit re-execution ------------------------------------------------------------
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

    # -- recovery ----------------------------------------------------------------
    def recover(self, seed: PolicyBundle | None = None) -> "LogSummary":
        """Bring the log level with the store at start-up (see module docstring).

        Since every change and its entry commit together, a store written by this version
        never lacks an entry; this repairs stores written before that, or by hand. It runs
        under the log's write lock (one :meth:`recorded` transaction), so a replica starting
        up never races a live one: live replicas wait, and whatever they committed before is
        in the log it scans. Jobs whose every dataset answered but whose result was never
        assembled are left to :meth:`complete_stalled`, which skips recent ones.

        ``seed``: the policy of the configuration files, put in force if the state has none
        yet (a first start); otherwise the version in force stays, whatever the files say.
        """
        with self.recorded() as conn:
            summary = self.audit.scan(self.audit.tlog.size_within(conn))
            self.audit.recover(self.store, summary)
            for job in self.store.jobs_in_state(JobState.CANCELLED):
                # idempotent: released rows are skipped; started ones keep their charge
                self.store.release_reservation(job.job_id, keep_started=True)
            complete = []
            for job, receipt, index in self.audit.recover_receipts(self.store, summary):
                current = self.store.get_job(job.job_id)
                if current is not None and self._advance(current, receipt):
                    complete.append((job.job_id, index))
            self._settle_policy(summary.latest_policy, seed)
        for job_id, index in complete:  # logged just now, under the lock: no other replica has them
            with self._lock_for(job_id):
                self._release(job_id, index)
        self.complete_stalled()
        return summary

    def _settle_policy(self, logged: str, seed: PolicyBundle | None) -> None:
        """At start-up, under the log's write lock: the version in force (or the seed on a first
        start) is this process's engine, and the log's last ``policy_changed`` names it."""
        current = self.store.current_policy_version()
        stored = self.store.policy_version(current) if current else None
        if stored is None:
            if seed is None:
                return
            bundle = seed
            self.store.put_policy_version(seed.version, seed.to_dict(), current=True)
        else:
            bundle = PolicyBundle(**stored)
            if seed is not None and seed.version != current:
                log.warning("policy files differ from the current policy version %s, which stays in force; "
                            "change policy with `yumen admin policy set`", current)
        engine = bundle.version == self._policy.version and self._policy or PolicyEngine(bundle)
        if logged != engine.version:
            self.audit.policy_changed(engine, previous=logged, changed_by=self.id)
        self._policy = engine


def budget_facts(r: Reservation) -> dict[str, str]:
    """What a ticket and a result need to know of a reservation: the accounting and its cost."""
    return {"accounting": r.accounting.value, "namespace": r.namespace,
            "delta": f"{r.delta.numerator}/{r.delta.denominator}" if r.delta else "",
            "amount": f"{r.amount.numerator}/{r.amount.denominator}"}


def dataset_version_of(reg: DatasetRegistration, receipt: Receipt) -> DatasetRegistration:
    """The registration as it was when the receipt's job ran (its logged data version)."""
    return dataclasses.replace(reg, version=receipt.dataset_version or reg.version)
