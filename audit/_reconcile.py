"""Auditor replay: re-decide every logged decision and rebuild the broker's books from the log.

``replay`` (in ``_replay``) walks the log and checks each job's lifecycle; this module plugs
in what needs the policy engine:

* :func:`reevaluate` re-decides a logged ``job_decided`` under the policy version it names
  (whose full text the log holds in its ``policy_changed`` entry) and the license as the log
  last recorded it, and fails when the outcome, the matched rule, the obligations or the
  reason differ. A denial at the budget gate is checked against the ledger rebuilt so far:
  the job must really have overrun its cap.
* :class:`Ledger` rebuilds what the broker reserves: every budget account (a license's on a
  dataset per period, a privacy-unit namespace's per period and for its lifetime; see
  ``yumen.policy``'s budget rules), from the charges allowed decisions logged, less
  cancelled jobs and jobs a department refused before touching data (given back exactly).
  :func:`reevaluate` re-derives those charges from the rules and checks that every allowed
  job fitted every cap in the order the log records, and every budget refusal overran one.
* :class:`Bills` adds up the bills of released jobs per (operator, currency).

:func:`compare_accounts` lists every difference between the rebuilt books and the ones the
broker reports (``AdminService.GetAccounts``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

from yumen.errors import Code, YumenError

from ._entries import Entry, JobDecided, JobExecuted, JobReleased
from ._replay import ReplayContext

__all__ = ["Bills", "Ledger", "compare_accounts", "reevaluate"]

_engines: dict[str, Any] = {}


def _engine(version: str, ctx: ReplayContext) -> Any:
    from yumen.policy import PolicyBundle, PolicyEngine

    if version not in _engines:
        details = ctx.policies[version].details
        bundle = PolicyBundle(model=details["model"], rules=details["rules"], settings=details["settings"])
        if bundle.version != version:
            raise YumenError(Code.VERIFICATION_FAILED, f"the text logged for policy {version} hashes to {bundle.version}")
        _engines[version] = PolicyEngine(bundle)
    return _engines[version]


def _fail(entry: JobDecided, what: str) -> YumenError:
    return YumenError(Code.VERIFICATION_FAILED, f"decision on job {entry.job_id} does not replay: {what}")


class Ledger:
    """Every budget account's balance (ε or ρ, and runs), rebuilt from the log.

    Allowed decisions add exactly the charges they logged (which :func:`reevaluate` checks
    against the budget rules); cancelled jobs and datasets a department refused give back
    exactly what they charged.
    """

    def __init__(self) -> None:
        self.books: dict[tuple[str, str, str], tuple[Fraction, int]] = {}
        self._jobs: dict[str, dict[str, list[Any]]] = {}

    def _add(self, key: tuple[str, str, str], amount: Fraction, runs: int) -> None:
        spent, n = self.books.get(key, (Fraction(0), 0))
        self.books[key] = (spent + amount, n + runs)

    def on_entry(self, index: int, entry: Entry, context: ReplayContext) -> None:
        from yumen.policy import Charge

        if isinstance(entry, JobDecided) and entry.allowed:
            charged: dict[str, list[Any]] = {}
            for ds, d in (entry.details.get("per_dataset") or {}).items():
                if "charges" not in d:
                    raise YumenError(Code.VERIFICATION_FAILED,
                                     f"the decision on job {entry.job_id} does not record what it charged on {ds}")
                charged[ds] = [Charge.from_list(c) for c in d["charges"]]
                for c in charged[ds]:
                    self._add(c.account, c.amount, c.runs)
            self._jobs[entry.job_id] = charged
        elif isinstance(entry, JobDecided) and entry.details.get("cancelled"):
            refunded = entry.details.get("refunded")
            if refunded is None:
                self._give_back(entry.job_id)
            for ds in refunded or ():
                self._give_back(entry.job_id, dataset=ds)
        elif isinstance(entry, JobExecuted) and entry.details.get("status") == "refused":
            self._give_back(entry.job_id, dataset=entry.dataset_id)

    def _give_back(self, job_id: str, *, dataset: str = "") -> None:
        """Return a job's charges (one dataset's, or all): nothing was touched there."""
        charged = self._jobs.get(job_id, {})
        for ds in [d for d in charged if not dataset or d == dataset]:
            for c in charged.pop(ds):
                self._add(c.account, -c.amount, -c.runs)

    def balance(self, account: tuple[str, str, str]) -> tuple[Fraction, int]:
        return self.books.get(account, (Fraction(0), 0))

    def spent(self, license: str, dataset: str, period: str) -> Fraction:
        return self.balance((license, dataset, period))[0]

    def result(self) -> dict[tuple[str, str, str], tuple[Fraction, int]]:
        return {k: v for k, v in self.books.items() if v != (Fraction(0), 0)}


class Bills:
    """Money billed per (operator, currency), from ``job_released`` entries."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], tuple[Decimal, int]] = {}

    def on_entry(self, index: int, entry: Entry, context: ReplayContext) -> None:
        if isinstance(entry, JobReleased) and entry.bill:
            key = (str(entry.bill.get("operator") or context.decisions[entry.job_id].operator),
                   str(entry.bill.get("currency", "CNY")))
            amount, n = self.totals.get(key, (Decimal(0), 0))
            self.totals[key] = (amount + Decimal(str(entry.bill.get("amount", "0"))), n + 1)

    def result(self) -> dict[tuple[str, str], tuple[Decimal, int]]:
        return dict(self.totals)


def _license_at(entry: JobDecided, ctx: ReplayContext) -> Any:
    from yumen.policy import License

    changed = ctx.licenses.get(entry.license_id)
    return License.from_dict(changed.details["license"]) if changed is not None else None


def reevaluate(entry: JobDecided, ctx: ReplayContext, ledger: Ledger | None = None) -> None:
    """Re-decide ``entry`` under the policy version and license state the log names."""
    from yumen.policy import DecisionRequest

    at = dt.datetime.strptime(entry.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    if entry.details.get("cancelled"):
        gate = entry.details.get("gate", "license")
        if gate == "operator":
            if entry.details.get("cancelled_by") != entry.operator:
                raise _fail(entry, f"it was cancelled by {entry.details.get('cancelled_by')!r}, not by its operator")
        elif gate == "expired":
            expires = entry.details.get("expires_ms") or {}
            at_ms = int(at.timestamp() * 1000)
            for ds in entry.details.get("refunded") or ():
                # 0: no ticket was ever issued for it (its connector never came online)
                if not isinstance(expires.get(ds), int) or expires[ds] < 0 or at_ms < expires[ds]:
                    raise _fail(entry, f"it gave back the budget of {ds} as expired before its ticket expired")
        elif gate != "license":
            raise _fail(entry, f"it was cancelled for an unknown reason ({gate!r})")
        else:
            lic = _license_at(entry, ctx)
            if lic is not None and lic.status.value == "active" and lic.valid_from <= at < lic.valid_until:
                raise _fail(entry, "it was cancelled, but its license was active and valid")
        return
    if entry.details.get("recovered"):
        return  # appended after a crash from the broker's own job record; its allowance replays below
    engine = _engine(entry.policy_version, ctx)
    lic = _license_at(entry, ctx)
    per = entry.details.get("per_dataset") or {
        entry.datasets[0]: {k: entry.details.get(k, "") for k in ("department", "level", "price_class", "period")}
    }
    budgets: list[tuple[str, dict[str, Any], Any]] = []
    # in the order the broker reserved them: the job's own dataset order
    for ds, d in sorted(per.items(), key=lambda kv: entry.datasets.index(kv[0]) if kv[0] in entry.datasets else 0):
        decision = engine.decide(DecisionRequest(
            license=entry.license_id, department=d["department"], dataset=ds, level=d["level"], tier=entry.tier,
            purpose=entry.purpose, epsilon=Fraction(entry.epsilon), price_class=d.get("price_class", "standard"),
            encrypted=bool(entry.details.get("he")), at=at,
        ), lic)
        obligations = decision.obligations.to_dict() if decision.obligations else {}
        if entry.allowed:
            if not decision.allowed:
                raise _fail(entry, f"logged as allowed, re-decided as denied: {decision.reason}")
            if decision.rule != d.get("rule", entry.matched_rule):
                raise _fail(entry, f"matched rule {decision.rule}, logged {d.get('rule', entry.matched_rule)}")
            if obligations != d.get("obligations", entry.obligations):
                raise _fail(entry, "the obligations differ from the logged ones")
            if str(decision.price) != str(d.get("price", decision.price)):
                raise _fail(entry, f"price {decision.price}, logged {d.get('price')}")
            budgets.append((ds, d, decision))
            continue
        gate = entry.details.get("gate", "")
        if gate == "budget":
            if not decision.allowed:
                raise _fail(entry, f"logged as over budget, but policy denies it: {decision.reason}")
            budgets.append((ds, d, decision))
        elif decision.allowed:
            raise _fail(entry, f"logged as denied ({entry.reason}), re-decided as allowed under rule {decision.rule}")
        elif decision.reason != entry.reason:
            raise _fail(entry, f"denied for another reason: {decision.reason!r}, logged {entry.reason!r}")
    _check_budget(entry, ctx, ledger, at, budgets)


def _check_budget(entry: JobDecided, ctx: ReplayContext, ledger: Ledger | None, at: dt.datetime,
                  budgets: list[tuple[str, dict[str, Any], Any]]) -> None:
    """Re-derive each dataset's reservation under the budget rules and check it against the
    ledger rebuilt so far: an allowed job must fit every cap and have charged exactly what the
    rules say; a job refused for budget must overrun at least one cap."""
    from yumen.catalog import PrivacyUnit
    from yumen.policy import Charge, refusal, limits_for

    if not budgets:
        return
    pending: dict[tuple[str, str, str], tuple[Fraction, int]] = {}
    over = ""
    for ds, d, decision in budgets:
        ob = decision.obligations
        unit = PrivacyUnit.from_dict(ctx.units.get(ds, {}))
        expected = None
        logged = [Charge.from_list(c) for c in d.get("charges", [])]
        # the decision was taken a moment before the log recorded it: accept the window of
        # either instant when they straddle a period boundary
        for when in (at, at - dt.timedelta(minutes=2)):
            r = limits_for(ds, unit, department=d.get("department", ""), license=entry.license_id,
                           epsilon=Fraction(entry.epsilon), epsilon_cap=ob.epsilon_cap, period_days=ob.period_days,
                           max_runs=ob.max_runs, dataset_epsilon_cap=ob.dataset_epsilon_cap,
                           dataset_period_days=ob.dataset_period_days, lifetime_epsilon_cap=ob.lifetime_epsilon_cap,
                           at=when)
            if list(r.charges()) == logged:
                expected = r
                break
        if expected is None:
            raise _fail(entry, f"on {ds} it charged {[c.to_list() for c in logged]}, but the budget rules "
                               f"under its policy and the dataset's registration charge {[c.to_list() for c in r.charges()]}")
        if ledger is None:
            continue
        for limit in expected.limits:
            spent, runs = ledger.balance(limit.account)
            extra, extra_runs = pending.get(limit.account, (Fraction(0), 0))
            err = refusal(expected, limit, spent + extra, runs + extra_runs)
            if err is not None:
                over = over or err.message
        for c in expected.charges():
            extra, extra_runs = pending.get(c.account, (Fraction(0), 0))
            pending[c.account] = (extra + c.amount, extra_runs + c.runs)
    if ledger is None:
        return
    if entry.allowed and over:
        raise _fail(entry, f"logged as allowed, but the log shows it over budget: {over}")
    if not entry.allowed and not over:
        raise _fail(entry, "logged as over budget, but the log shows every account it would charge within its cap")


def compare_accounts(ledger: dict[Any, tuple[Fraction, int]], bills: dict[Any, tuple[Decimal, int]],
                     broker: dict[str, Any]) -> list[str]:
    """Every difference between the books rebuilt from the log and the broker's own."""
    out = []
    theirs = {k: v for k, v in broker["ledger"].items() if v != (Fraction(0), 0)}
    for key in sorted(set(ledger) | set(theirs)):
        if ledger.get(key) != theirs.get(key):
            lic, ds, period = key
            mine, other = ledger.get(key, (0, 0)), theirs.get(key, (0, 0))
            out.append(f"ledger {lic}/{ds}/{period}: the log gives ε {mine[0]} in {mine[1]} runs, "
                       f"the broker {other[0]} in {other[1]} runs")
    for key in sorted(set(bills) | set(broker["bills"])):
        if bills.get(key) != broker["bills"].get(key):
            out.append(f"bills of {key[0]} in {key[1]}: the log gives {bills.get(key)}, the broker {broker['bills'].get(key)}")
    return out


def entries_from_export(directory: str) -> list[tuple[int, Entry]]:
    from ._entries import decode_entry

    out = []
    with open(f"{directory}/entries.jsonl") as f:
        for line in f:
            row = json.loads(line)
            out.append((int(row["index"]), decode_entry(base64.b64decode(row["leaf"]))))
    return out
