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
import datetime as dt
import json
import logging
import queue
import re
import threading
from decimal import Decimal
from fractions import Fraction
from typing import Any, Iterator

from cryptography.hazmat.primitives.asymmetric import ec

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError, echo
from yumen.identity import Identity, Role, sign_payload
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
from yumen.broker._audit import BrokerAudit
from yumen.broker._links import ConnectorLink, ConnectorLinks, OutgoingControl, OutgoingTicket
from yumen.broker._recovery import Recovery
from yumen.broker._reexecution import Reexecution
from yumen.broker._store import EventRecord, JobRecord, Store, now_ms

log = logging.getLogger(__name__)

__all__ = ["Broker", "ConnectorLink", "OutgoingControl", "OutgoingTicket", "EXPIRED", "OVERDUE"]

# The only words an operator gets about a job that timed out. They are fixed: when a ticket
# expired or a job overran depends on the department's connector, never on the data.
EXPIRED = ("the ticket expired before the department's connector started the job (the connector may be offline, "
           "or unable to verify the broker's tickets); nothing was released and the reserved budget was returned")
OVERDUE = ("the job did not finish within its limits at the department; nothing was released and the budget stays "
           "spent (the department may have read the data)")

class Broker(ConnectorLinks, Reexecution, Recovery):
    """The job path: identity, policy and licenses, the catalog, jobs, cancellation and
    expiry, results. Connector links and receipt intake (:mod:`yumen.broker._links`), audit
    re-execution (:mod:`yumen.broker._reexecution`) and start-up recovery
    (:mod:`yumen.broker._recovery`) are mixed in."""

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

    # -- cancellation and ticket expiry (the start and stop handshakes: _links) -------------
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

    # -- results: each receipt advances its job, the last one releases it ----------------
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







def budget_facts(r: Reservation) -> dict[str, str]:
    """What a ticket and a result need to know of a reservation: the accounting and its cost."""
    return {"accounting": r.accounting.value, "namespace": r.namespace,
            "delta": f"{r.delta.numerator}/{r.delta.denominator}" if r.delta else "",
            "amount": f"{r.amount.numerator}/{r.amount.denominator}"}
