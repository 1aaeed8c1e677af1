"""Replay: walk the decoded log in order, check its story, and let callers re-derive state.

This is the hook the auditor's ``yumen audit replay`` builds on. The walk itself checks the
lifecycle every job must follow (a decision under a logged policy version, executions only
after an allowance and only of its datasets at registered versions, ε charged within ε
decided, a release only after execution). Two plug points carry what needs other
components:

* ``reevaluate(decision, context)``: re-decide a logged ``job_decided`` under the policy
  version it names (the broker's policy engine); raise ``YumenError`` if the outcome,
  matched rule or obligations differ. ``context`` holds everything logged before it.
* ``accumulators``: objects with ``on_entry(index, entry, context)`` and ``result()`` that
  rebuild derived state from the log, e.g. :class:`BudgetLedger` (ε spent per license and
  dataset, exact) and :class:`BillTotals` (money charged per operator and currency, exact),
  which the caller compares with the broker's own ledger and bills.

Every failure raises ``VERIFICATION_FAILED`` naming the entry index and type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Protocol

from yumen.errors import Code, YumenError

from ._entries import (
    DatasetRegistered,
    Entry,
    JobDecided,
    JobExecuted,
    JobReleased,
    LicenseChanged,
    PolicyChanged,
    StewardshipRecorded,
)

__all__ = ["ReplayContext", "Accumulator", "BudgetLedger", "BillTotals", "ReplayReport", "replay"]


@dataclasses.dataclass
class ReplayContext:
    """What the log established up to the entry being replayed (mutable, owned by ``replay``)."""

    policies: dict[str, PolicyChanged] = dataclasses.field(default_factory=dict)
    current_policy: str = ""
    dataset_versions: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    # each dataset's privacy unit as last registered (namespace, accounting): whose budget it spends
    units: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    licenses: dict[str, LicenseChanged] = dataclasses.field(default_factory=dict)
    decisions: dict[str, JobDecided] = dataclasses.field(default_factory=dict)
    executions: dict[str, list[JobExecuted]] = dataclasses.field(default_factory=dict)
    released: set[str] = dataclasses.field(default_factory=set)
    cancelled: set[str] = dataclasses.field(default_factory=set)
    # per cancelled job: the datasets whose budget the cancellation gave back (none may run after)
    refunded: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    # versions whose retained snapshot the department confirmed destroyed: no job may run on them after
    destroyed: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    # answered verifications per (cap key, day): checked against the caps each answer names
    verifications: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)


class Accumulator(Protocol):
    def on_entry(self, index: int, entry: Entry, context: ReplayContext) -> None: ...

    def result(self) -> Any: ...


class BudgetLedger:
    """ε charged per ``(license_id, dataset_id)``, recomputed exactly from ``job_executed`` entries."""

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], Fraction] = {}

    def on_entry(self, index: int, entry: Entry, context: ReplayContext) -> None:
        if isinstance(entry, JobExecuted):
            license_id = context.decisions[entry.job_id].license_id
            key = (license_id, entry.dataset_id)
            self._spent[key] = self._spent.get(key, Fraction(0)) + Fraction(entry.epsilon_charged)

    def result(self) -> dict[tuple[str, str], Fraction]:
        return dict(self._spent)


class BillTotals:
    """Money charged per ``(operator, currency)``, from ``job_released.bill`` (``amount`` decimal string)."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str], Decimal] = {}

    def on_entry(self, index: int, entry: Entry, context: ReplayContext) -> None:
        if isinstance(entry, JobReleased) and entry.bill:
            try:
                amount = Decimal(str(entry.bill["amount"]))
            except (KeyError, InvalidOperation):
                raise YumenError(Code.VERIFICATION_FAILED, "the bill has no decimal 'amount'") from None
            key = (context.decisions[entry.job_id].operator, str(entry.bill.get("currency", "")))
            self._totals[key] = self._totals.get(key, Decimal(0)) + amount

    def result(self) -> dict[tuple[str, str], Decimal]:
        return dict(self._totals)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplayReport:
    entries: int
    jobs_decided: int
    decisions_reevaluated: int
    results: Mapping[str, Any]

    def __post_init__(self) -> None:
        if self.decisions_reevaluated > self.jobs_decided:
            raise YumenError(Code.INTERNAL, "more decisions re-evaluated than logged")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise YumenError(Code.VERIFICATION_FAILED, message)


def _step(entry: Entry, ctx: ReplayContext) -> None:
    if isinstance(entry, PolicyChanged):
        _check(
            entry.previous_version == ctx.current_policy,
            f"policy {entry.policy_version} says it replaces {entry.previous_version or 'nothing'}, "
            f"but the policy in force was {ctx.current_policy or 'none'}",
        )
        ctx.policies[entry.policy_version] = entry
        ctx.current_policy = entry.policy_version
    elif isinstance(entry, DatasetRegistered):
        ctx.dataset_versions.setdefault(entry.dataset_id, set()).add(entry.version)
        ctx.units[entry.dataset_id] = dict(entry.details.get("privacy_unit") or {})
    elif isinstance(entry, LicenseChanged):
        ctx.licenses[entry.license_id] = entry
    elif isinstance(entry, JobDecided):
        # A job id may be denied any number of times (a denied job is not kept, so the id can
        # be submitted again), allowed at most once, and cancelled once after it was allowed
        # and before its release. A cancellation gives back the budget of the datasets it names
        # as refunded (all of them when it names none): none of those may have run, before or
        # after it. A license lapse cancels only jobs none of whose tickets ran.
        previous = ctx.decisions.get(entry.job_id)
        if previous is not None and previous.allowed:
            cancels = not entry.allowed and bool(entry.details.get("cancelled"))
            _check(cancels, f"job {entry.job_id} was already allowed")
            _check(entry.job_id not in ctx.cancelled, f"job {entry.job_id} was cancelled twice")
            _check(entry.job_id not in ctx.released, f"job {entry.job_id} was cancelled after its release")
            ran = {e.dataset_id for e in ctx.executions.get(entry.job_id, []) if e.details.get("status") != "refused"}
            if entry.details.get("gate", "license") == "license":
                _check(not ran, f"job {entry.job_id} was cancelled after it ran")
            refunded = entry.details.get("refunded")
            given_back = set(previous.datasets) if refunded is None else set(refunded)
            _check(given_back <= set(previous.datasets), f"job {entry.job_id}'s cancellation gives back a dataset it never charged")
            _check(not given_back & ran,
                   f"job {entry.job_id}'s cancellation gives back the budget of {', '.join(sorted(given_back & ran))}, "
                   "where it ran")
            ctx.cancelled.add(entry.job_id)
            ctx.refunded[entry.job_id] = given_back
        _check(entry.policy_version in ctx.policies, f"job {entry.job_id} names policy {entry.policy_version}, never logged")
        if previous is None or not previous.allowed:
            ctx.decisions[entry.job_id] = entry
    elif isinstance(entry, JobExecuted):
        decision = ctx.decisions.get(entry.job_id)
        if decision is None or not decision.allowed:
            raise YumenError(Code.VERIFICATION_FAILED, f"job {entry.job_id} ran without an allowing decision")
        if entry.job_id in ctx.cancelled and entry.details.get("status") != "refused":
            # a department started it before the cancellation, which kept its budget there
            _check(entry.dataset_id not in ctx.refunded.get(entry.job_id, set()),
                   f"job {entry.job_id} ran on {entry.dataset_id} after its budget there was given back")
        _check(entry.dataset_id in decision.datasets, f"job {entry.job_id} ran on {entry.dataset_id}, not a dataset it was allowed")
        _check(
            entry.dataset_version in ctx.dataset_versions.get(entry.dataset_id, ()),
            f"job {entry.job_id} ran on version {entry.dataset_version} of {entry.dataset_id}, never registered",
        )
        _check(entry.job_id not in ctx.released, f"job {entry.job_id} executed after its release")
        _check(entry.dataset_version not in ctx.destroyed.get(entry.dataset_id, ()),
               f"job {entry.job_id} ran on version {entry.dataset_version} of {entry.dataset_id} after the department "
               "confirmed it destroyed")
        _check(
            Fraction(entry.epsilon_charged) <= Fraction(decision.epsilon),
            f"job {entry.job_id} charged ε {entry.epsilon_charged} above the ε {decision.epsilon} decided",
        )
        rho = Fraction(str(entry.details.get("rho_charged", "0")))
        if rho:
            reserved = (decision.details.get("per_dataset") or {}).get(entry.dataset_id, {})
            _check(
                reserved.get("accounting") == "zcdp" and rho <= Fraction(str(reserved.get("amount", "0"))),
                f"job {entry.job_id} charged ρ {rho} on {entry.dataset_id}, above the ρ reserved for it",
            )
        ctx.executions.setdefault(entry.job_id, []).append(entry)
    elif isinstance(entry, StewardshipRecorded):
        _step_stewardship(entry, ctx)
    elif isinstance(entry, JobReleased):
        _check(entry.job_id in ctx.executions, f"job {entry.job_id} released a result it never executed")
        _check(entry.job_id not in ctx.released, f"job {entry.job_id} released twice")
        _check(entry.job_id not in ctx.cancelled, f"job {entry.job_id} released a result after it was cancelled")
        ctx.released.add(entry.job_id)


def _step_stewardship(entry: StewardshipRecorded, ctx: ReplayContext) -> None:
    """A verification answer stays within the caps it names; a destroyed version was registered."""
    st = entry.statement
    if entry.kind == "version_destroyed":
        _check(entry.dataset_version in ctx.dataset_versions.get(entry.dataset_id, ()),
               f"version {entry.dataset_version} of {entry.dataset_id} was destroyed but never registered")
        ctx.destroyed.setdefault(entry.dataset_id, set()).add(entry.dataset_version)
        return
    if entry.kind == "quality_report":
        _check(entry.dataset_version in ctx.dataset_versions.get(entry.dataset_id, ()),
               f"a quality report on version {entry.dataset_version} of {entry.dataset_id}, never registered")
        return
    _check(entry.dataset_id in ctx.dataset_versions, f"a verification on {entry.dataset_id}, never registered")
    _check(st.get("answer") in ("yes", "no", "refused"), f"verification {st.get('request_id')}: unknown answer")
    if st.get("answer") == "refused":
        return
    _check(entry.dataset_version in ctx.dataset_versions.get(entry.dataset_id, ()),
           f"verification {st.get('request_id')} answered on version {entry.dataset_version}, never registered")
    limits = st.get("limits") or {}
    day = str(int(st.get("at_ms", 0)) // 86_400_000)
    for key, cap in ((f"license:{st.get('license')}:{entry.dataset_id}", limits.get("per_license_per_day")),
                     (f"subject:{entry.dataset_id}:{st.get('subject')}", limits.get("per_subject_per_day"))):
        count = ctx.verifications.get((key, day), 0) + 1
        ctx.verifications[(key, day)] = count
        _check(isinstance(cap, int) and count <= cap,
               f"verification {st.get('request_id')} exceeds the department's cap ({key.split(':')[0]}: {count} > {cap})")


def replay(
    entries: Iterable[tuple[int, Entry]],
    *,
    reevaluate: Callable[[JobDecided, ReplayContext], None] | None = None,
    accumulators: Mapping[str, Accumulator] | None = None,
) -> ReplayReport:
    """Replay ``(index, entry)`` pairs in order; raises ``VERIFICATION_FAILED`` at the first inconsistency."""
    ctx = ReplayContext()
    accumulators = dict(accumulators or {})
    count = decided = reevaluated = 0
    expected = None
    for index, entry in entries:
        where = f"replay: entry {index} ({entry.TYPE})"
        if expected is not None and index != expected:
            raise YumenError(Code.VERIFICATION_FAILED, f"{where}: expected entry {expected} next")
        expected = index + 1
        try:
            if isinstance(entry, JobDecided) and reevaluate is not None:
                reevaluate(entry, ctx)  # before _step: it sees only what came before
                reevaluated += 1
            _step(entry, ctx)
            for acc in accumulators.values():
                acc.on_entry(index, entry, ctx)
        except YumenError as e:
            raise YumenError(Code.VERIFICATION_FAILED, f"{where}: {e.message}", hint=e.hint) from None
        decided += isinstance(entry, JobDecided)
        count += 1
    return ReplayReport(
        entries=count,
        jobs_decided=decided,
        decisions_reevaluated=reevaluated,
        results={name: acc.result() for name, acc in accumulators.items()},
    )
