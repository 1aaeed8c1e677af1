"""The privacy-budget rules, in one pure module: which accounts a job charges and whether it fits.

Used by both broker stores (which hold the balances and apply a reservation atomically), by
the broker's explanations (which read balances and report what is left) and by the auditor's
replay (which rebuilds the balances from the log and re-checks every reservation). Nothing here does
I/O; every amount is an exact ``Fraction``.

Accounts
--------
A reservation for one dataset of a job charges three accounts, each with its own cap:

=====================  ==================================  ================================
account                key (holder, subject, window)       cap (from)
=====================  ==================================  ================================
license period         (license, dataset, "30d:683")       rule ``epsilon_cap``, ``max_runs``
namespace period       ("*", "ns:NS", "30d:683")           level ``dataset_epsilon_cap``
namespace lifetime     ("*", "ns:NS", "lifetime")          level ``lifetime_epsilon_cap``,
                                                           and the registration's own
=====================  ==================================  ================================

``NS`` is the dataset's privacy-unit namespace (:func:`namespace_key`): the set of people its
privacy unit ranges over. Datasets whose registrations share a namespace hold the same people,
so one person's loss is the *sum* of what jobs spent on all of them; the two namespace
accounts add up every dataset of the namespace. The lifetime account never renews: no period,
rule, policy change or refund can take a namespace past its lifetime cap. The namespace's
period window is the level's ``dataset_period_days`` (not a rule's), so two rules with
different periods share one window; a license's window is its rule's.

Every reservation records exactly what it charged (:class:`Charge`), and a refund gives back
exactly that, never more.

Units
-----
A namespace keeps pure ε, or ρ of zero-concentrated DP (``accounting = "zcdp"`` in its
registrations, with a δ). Under zCDP every amount and cap is ρ: a job's ε at the dataset's δ
becomes ρ = (√(ln(1/δ) + ε) − √(ln(1/δ)))², the largest ρ whose (ε, δ)-DP guarantee is at
most ε (Bun and Steinke 2016, Prop. 1.3), rounded down to an exact fraction; caps convert the
same way. ρ composes by addition, so the ledger stays exact and replayable, and ten jobs cost
far less than ten times one job's ε.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from fractions import Fraction
from typing import TYPE_CHECKING

from yumen.catalog import DatasetRegistration, PrivacyUnit
from yumen.errors import Code, YumenError
from yumen.jobs import format_epsilon
from yumen.loss import Accounting, epsilon_of_rho, rho_of_epsilon

if TYPE_CHECKING:
    from yumen.policy._engine import Obligations

__all__ = [
    "Account",
    "Charge",
    "Limit",
    "Reservation",
    "LIFETIME",
    "charges_of",
    "limits_for",
    "namespace_key",
    "period_of",
    "refusal",
    "reservation_for",
    "describe_amount",
]

LIFETIME = "lifetime"
ALL_LICENSES = "*"

Account = tuple[str, str, str]  # (license or "*", dataset or "ns:NAMESPACE", window)


def period_of(period_days: int, at: dt.datetime) -> str:
    """Budget windows of ``period_days`` days counted from the Unix epoch (UTC)."""
    day = int(at.timestamp() // 86400)
    return f"{period_days}d:{day // period_days}"


def namespace_key(dataset: str, department: str, unit: PrivacyUnit) -> str:
    """The ledger's name for the people a dataset's privacy unit ranges over.

    Without a declared namespace a dataset is its own; a namespace a department declares is
    its own unless the registration marks it shared, in which case every department that
    declares the same shared name speaks of the same people.
    """
    if not unit.namespace:
        return f"ns:dataset/{dataset}"
    if unit.shared:
        return f"ns:shared/{unit.namespace}"
    return f"ns:department/{department}/{unit.namespace}"


def _num(x: Fraction) -> str:
    return format_epsilon(x) if x else "0"


def describe_amount(amount: Fraction, accounting: Accounting, delta: Fraction) -> str:
    """An amount as a person reads it: ``0.5 ε``, or ``0.0031 ρ (ε 0.5 at δ 1e-09)``."""
    if accounting is Accounting.PURE:
        return f"{_num(amount)} ε"
    return f"{_num(amount)} ρ (ε {_num(epsilon_of_rho(amount, delta))} at δ {float(delta):.0e})"


def _left_of(left: Fraction, cap: Fraction, accounting: Accounting, delta: Fraction) -> str:
    if accounting is Accounting.PURE:
        return f"{_num(left)} of {_num(cap)} ε"
    return (f"{_num(left)} of {_num(cap)} ρ (ε {_num(epsilon_of_rho(left, delta))} of "
            f"{_num(epsilon_of_rho(cap, delta))} at δ {float(delta):.0e})")


def _ask_at_most(left: Fraction, accounting: Accounting, delta: Fraction) -> str:
    eps = left if accounting is Accounting.PURE else epsilon_of_rho(left, delta, round_up=False)
    return f"ask for ε ≤ {_num(eps)}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limit:
    """One account a reservation charges, and its cap (in the namespace's unit)."""

    kind: str  # "license" | "namespace" | "lifetime"
    account: Account
    cap: Fraction
    max_runs: int = 0  # license accounts only (0: no run limit)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Charge:
    """What one reservation added to one account; a refund subtracts exactly this."""

    account: Account
    amount: Fraction
    runs: int = 1

    def to_list(self) -> list[str | int]:
        return [*self.account, f"{self.amount.numerator}/{self.amount.denominator}", self.runs]

    @classmethod
    def from_list(cls, row: list[str | int]) -> "Charge":
        if not isinstance(row, list) or len(row) != 5:
            raise YumenError(Code.VERIFICATION_FAILED, f"a budget charge must be [holder, subject, window, amount, runs], got {row!r}")
        holder, subject, window, amount, runs = row
        return cls(account=(str(holder), str(subject), str(window)), amount=Fraction(str(amount)), runs=int(runs))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reservation:
    """The budget one dataset of a job reserves: an amount against a set of limits.

    ``epsilon`` is what the operator asked for; ``amount`` what it costs in the namespace's
    unit (ε itself, or ρ under zCDP).
    """

    dataset: str
    license: str
    epsilon: Fraction
    accounting: Accounting
    delta: Fraction
    amount: Fraction
    namespace: str
    period: str  # the license's window (for the log)
    limits: tuple[Limit, ...]

    def charges(self) -> tuple[Charge, ...]:
        return charges_of(self)


def charges_of(r: Reservation) -> tuple[Charge, ...]:
    return tuple(Charge(account=limit.account, amount=r.amount) for limit in r.limits)


def limits_for(
    dataset: str,
    unit: PrivacyUnit,
    *,
    department: str,
    license: str,
    epsilon: Fraction,
    epsilon_cap: Fraction,
    period_days: int,
    max_runs: int,
    dataset_epsilon_cap: Fraction,
    dataset_period_days: int,
    lifetime_epsilon_cap: Fraction,
    at: dt.datetime,
) -> Reservation:
    """The reservation a job asking ``epsilon`` of ``reg`` makes under these obligations.

    Caps of 0 mean "no such cap" for the namespace period account only; the lifetime cap is
    the smaller of the policy's and the registration's (when it declares one).
    """
    accounting, delta = unit.accounting, unit.delta

    def convert(eps: Fraction) -> Fraction:
        return eps if accounting is Accounting.PURE else rho_of_epsilon(eps, delta)

    lifetime = lifetime_epsilon_cap
    if unit.lifetime_epsilon is not None:
        lifetime = min(lifetime, unit.lifetime_epsilon)
    ns = namespace_key(dataset, department, unit)
    period = period_of(period_days, at)
    limits = [Limit(kind="license", account=(license, dataset, period), cap=convert(epsilon_cap), max_runs=max_runs)]
    if dataset_epsilon_cap:
        limits.append(Limit(kind="namespace", account=(ALL_LICENSES, ns, period_of(dataset_period_days, at)),
                            cap=convert(dataset_epsilon_cap)))
    limits.append(Limit(kind="lifetime", account=(ALL_LICENSES, ns, LIFETIME), cap=convert(lifetime)))
    return Reservation(dataset=dataset, license=license, epsilon=epsilon, accounting=accounting, delta=delta,
                       amount=convert(epsilon), namespace=ns, period=period, limits=tuple(limits))


def reservation_for(reg: DatasetRegistration, *, license: str, epsilon: Fraction, obligations: "Obligations",
                    at: dt.datetime) -> Reservation:
    """:func:`limits_for` with the caps of a decision's obligations."""
    ob = obligations
    return limits_for(reg.id, reg.privacy_unit, department=reg.department, license=license, epsilon=epsilon, epsilon_cap=ob.epsilon_cap, period_days=ob.period_days,
                      max_runs=ob.max_runs, dataset_epsilon_cap=ob.dataset_epsilon_cap,
                      dataset_period_days=ob.dataset_period_days, lifetime_epsilon_cap=ob.lifetime_epsilon_cap, at=at)


def refusal(r: Reservation, limit: Limit, spent: Fraction, runs: int) -> YumenError | None:
    """Why ``r`` does not fit ``limit`` given the account's balance, or None when it fits."""
    over = spent + r.amount > limit.cap
    if not over and not (limit.max_runs and runs + 1 > limit.max_runs):
        return None
    left = max(limit.cap - spent, Fraction(0))
    left_of = _left_of(left, limit.cap, r.accounting, r.delta)
    hint = _ask_at_most(left, r.accounting, r.delta) if left > 0 else "wait for the next budget period"
    window = limit.account[2]
    people = "" if r.namespace == f"ns:dataset/{r.dataset}" else f" (people of namespace {r.namespace.removeprefix('ns:')})"
    if limit.kind == "license":
        if over:
            return YumenError(
                Code.BUDGET_EXHAUSTED,
                f"budget exhausted: {left_of} left on dataset {r.dataset} for license {r.license} in period {window}; "
                f"this job asks for {_num(r.epsilon)}",
                hint=hint,
            )
        return YumenError(
            Code.BUDGET_EXHAUSTED,
            f"run limit reached: license {r.license} has run {runs} of {limit.max_runs} jobs allowed on dataset "
            f"{r.dataset} in period {window}",
            hint="wait for the next budget period",
        )
    if limit.kind == "namespace":
        return YumenError(
            Code.BUDGET_EXHAUSTED,
            f"dataset budget exhausted: {left_of} left on dataset {r.dataset}{people} for all licenses together "
            f"in period {window}",
            hint=hint,
        )
    return YumenError(
        Code.BUDGET_EXHAUSTED,
        f"lifetime budget exhausted: {left_of} left on dataset {r.dataset}{people} for all licenses, periods and "
        f"rules together; this job asks for {_num(r.epsilon)}",
        hint=hint if left > 0 else "no further job can spend budget on these people; the lifetime cap never renews",
    )
