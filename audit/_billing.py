"""Charges, statements and revenue, rebuilt from the log alone (docs/billing.md).

Two readings of the same log:

* :func:`logged_statements` lists the ``charge`` entries as the broker wrote them: what it
  held, settled and released, and for how much. This is what ``yumen billing statement``
  shows.
* :class:`BillingBook`, a replay accumulator, rebuilds the price catalogue from
  ``catalogue_changed`` entries (refusing any change the rules forbid: a price above its
  cap, overlapping effective dates, a change back-dated before it was made, a cap or price
  set by the wrong role) and recomputes every charge from first principles: the hold from
  the catalogue in force when the job was accepted and the ε it was allowed, the settlement
  from the hold's unit prices and the departments' signed metering in the ``job_executed``
  entries, the revenue shares by the rule in force. It never copies an amount from a
  charge entry.

``yumen audit replay`` compares the two, statement by statement, to the fen
(:func:`compare_statements`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction
from typing import Any

from yumen.errors import Code, YumenError

from ._entries import CatalogueChanged, ChargeRecorded, DatasetRegistered, Entry, JobDecided, JobExecuted

__all__ = ["BillingBook", "compare_statements", "logged_statements", "period_of_time", "revenue_report"]


def _fail(message: str) -> YumenError:
    return YumenError(Code.VERIFICATION_FAILED, message)


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def period_of_time(text: str) -> str:
    """The statement period (``YYYY-MM``, UTC) of an entry time."""
    return text[:7]


def _decimal_of_fraction(text: str) -> Decimal:
    f = Fraction(text)
    return Decimal(f.numerator) / Decimal(f.denominator)


def _job_line(job_id: str, settle: ChargeRecorded, index: int, *, lines: list[dict[str, str]], amount: Decimal,
              datasets: list[str], departments: list[str], indices: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "job_id": job_id, "time": settle.time, "period": period_of_time(settle.time), "status": status,
        "license": settle.license_id, "operator": settle.operator, "purpose": settle.purpose,
        "product": settle.product, "lines": lines, "amount": str(amount.quantize(Decimal("0.01"))),
        "currency": settle.currency, "datasets": datasets, "departments": departments,
        "log_indices": {**indices, status: index},
    }


def logged_statements(entries: Iterable[tuple[int, Entry]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(license, period) → statement lines, as the ``charge`` entries say (see module docstring)."""
    holds: dict[str, int] = {}
    decided: dict[str, int] = {}
    executed: dict[str, list[int]] = {}
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for index, entry in entries:
        if isinstance(entry, JobDecided) and entry.allowed:
            decided[entry.job_id] = index
        elif isinstance(entry, JobExecuted):
            executed.setdefault(entry.job_id, []).append(index)
        elif isinstance(entry, ChargeRecorded):
            if entry.kind == "hold":
                holds[entry.job_id] = index
                continue
            status = "settled" if entry.kind == "settle" else "released"
            line = _job_line(entry.job_id, entry, index, lines=list(entry.details.get("lines") or []),
                             amount=Decimal(entry.amount) if entry.kind == "settle" else Decimal(0),
                             datasets=list(entry.details.get("datasets") or []),
                             departments=list(entry.details.get("departments") or []),
                             indices={"decided": decided.get(entry.job_id, -1), "hold": holds.get(entry.job_id, -1),
                                      "executed": executed.get(entry.job_id, [])},
                             status=status)
            out.setdefault((entry.license_id, line["period"]), []).append(line)
    return out


class BillingBook:
    """Replay accumulator: the catalogue, every charge recomputed, revenue shares, per-dataset facts."""

    def __init__(self) -> None:
        from yumen.policy import Catalogue

        self.catalogue = Catalogue()
        self.departments: dict[str, str] = {}            # dataset -> department
        self.decided: dict[str, int] = {}                 # job -> index of its allowing decision
        self.executed: dict[str, list[tuple[int, JobExecuted]]] = {}
        self.holds: dict[str, tuple[int, ChargeRecorded, dict[str, tuple[Decimal, Decimal]]]] = {}
        self.closed: set[str] = set()
        self.statements: dict[tuple[str, str], list[dict[str, Any]]] = {}
        # revenue: (period, dataset) -> amount credited
        self.revenue: dict[tuple[str, str], Decimal] = {}
        self.differences: list[str] = []

    # -- the walk ----------------------------------------------------------------------------
    def on_entry(self, index: int, entry: Entry, context: Any) -> None:
        from yumen.policy import CatalogueChange

        if isinstance(entry, DatasetRegistered):
            self.departments[entry.dataset_id] = entry.department
        elif isinstance(entry, JobDecided) and entry.allowed and entry.job_id not in self.decided:
            self.decided[entry.job_id] = index
        elif isinstance(entry, JobExecuted):
            self.executed.setdefault(entry.job_id, []).append((index, entry))
        elif isinstance(entry, CatalogueChanged):
            if entry.role == "seed" and any(h["role"] != "seed" for _, h in self.catalogue.history):
                raise _fail("a seed catalogue change after the catalogue was first changed by a person")
            change = CatalogueChange(kind=entry.kind, by=entry.changed_by, role=entry.role, fields=entry.fields)
            self.catalogue.apply(change, at=_time(entry.time), index=index)
        elif isinstance(entry, ChargeRecorded):
            self._charge(index, entry, context)

    def _charge(self, index: int, entry: ChargeRecorded, ctx: Any) -> None:
        from yumen.policy import metered_quantities, price_lines, quoted_quantities, total_of

        decision = ctx.decisions.get(entry.job_id)
        if decision is None or not decision.allowed:
            raise _fail(f"a charge for job {entry.job_id}, which no decision allowed")
        if (entry.license_id, entry.operator, entry.purpose) != (decision.license_id, decision.operator, decision.purpose):
            raise _fail(f"the charge of job {entry.job_id} names another license, operator or purpose than its decision")
        if entry.kind == "hold":
            if entry.job_id in self.holds:
                raise _fail(f"job {entry.job_id} was held twice")
            product = _product_of(decision)
            if entry.product != product:
                raise _fail(f"job {entry.job_id} was held as product {entry.product!r}; its first dataset sells as {product!r}")
            rates = self.catalogue.in_force(product, entry.purpose, _time(entry.time))
            lines = price_lines(rates, quoted_quantities(epsilon=_decimal_of_fraction(decision.epsilon),
                                                         datasets=len(decision.datasets)))
            self._expect(entry, lines, total_of(lines))
            if entry.details.get("revenue_rule") != self.catalogue.revenue_rule:
                raise _fail(f"job {entry.job_id} was held under revenue rule {entry.details.get('revenue_rule')!r}; "
                            f"{self.catalogue.revenue_rule!r} was in force")
            self.holds[entry.job_id] = (index, entry, rates)
            return
        held = self.holds.get(entry.job_id)
        if held is None:
            raise _fail(f"job {entry.job_id} was charged ({entry.kind}) without a hold")
        if entry.job_id in self.closed:
            raise _fail(f"job {entry.job_id} was settled or released twice")
        self.closed.add(entry.job_id)
        hold_index, hold, rates = held
        executions = self.executed.get(entry.job_id, [])
        touched = [e for _, e in executions if e.details.get("status") != "refused"]
        datasets = sorted({e.dataset_id for e in touched}) or list(decision.datasets)
        departments = sorted({self.departments.get(d, "") for d in datasets} - {""})
        indices = {"decided": self.decided.get(entry.job_id, -1), "hold": hold_index,
                   "executed": [i for i, _ in executions]}
        if entry.kind == "release":
            if touched:
                raise _fail(f"job {entry.job_id}'s hold was released although department(s) "
                            f"{', '.join(sorted({e.dataset_id for e in touched}))} ran it")
            line = _job_line(entry.job_id, entry, index, lines=[], amount=Decimal(0), datasets=datasets,
                             departments=departments, indices=indices, status="released")
            self.statements.setdefault((entry.license_id, line["period"]), []).append(line)
            return
        if not touched:
            raise _fail(f"job {entry.job_id} was settled although no department ran it; its hold should be released")
        quantities = metered_quantities(
            (str(e.details.get("status", "")), _decimal_of_fraction(e.epsilon_charged), e.metering) for e in touched)
        lines = price_lines(rates, quantities)
        amount = total_of(lines)
        self._expect(entry, lines, amount)
        shares = self.shares(amount, touched, hold.details["revenue_rule"])
        if (entry.details.get("shares") or {}) != {k: str(v) for k, v in shares.items()}:
            self.differences.append(f"job {entry.job_id}: revenue shares logged {entry.details.get('shares')}, "
                                    f"recomputed {({k: str(v) for k, v in shares.items()})}")
        period = period_of_time(entry.time)
        for ds, share in shares.items():
            self.revenue[(period, ds)] = self.revenue.get((period, ds), Decimal(0)) + share
        line = _job_line(entry.job_id, entry, index, lines=lines, amount=amount, datasets=datasets,
                         departments=departments, indices=indices, status="settled")
        self.statements.setdefault((entry.license_id, period), []).append(line)

    @staticmethod
    def shares(amount: Decimal, touched: list[JobExecuted], rule: str) -> dict[str, Decimal]:
        """The charge split to the datasets that served it, by the revenue rule in force when it was held."""
        from yumen.policy import split_fen

        weights: dict[str, Decimal] = {}
        for e in touched:
            w = _decimal_of_fraction(e.epsilon_charged) if rule == "epsilon" else Decimal(1)
            weights[e.dataset_id] = weights.get(e.dataset_id, Decimal(0)) + w
        return split_fen(amount, weights)

    def _expect(self, entry: ChargeRecorded, lines: list[dict[str, str]], amount: Decimal) -> None:
        """Note where a logged charge differs from the recomputed one (compared to the fen)."""
        logged = Decimal(entry.amount)
        if logged != amount or list(entry.details.get("lines") or []) != lines:
            self.differences.append(f"job {entry.job_id}: {entry.kind} logged {logged:.2f} CNY, recomputed {amount:.2f} CNY "
                                    f"from the catalogue and the metering")

    def result(self) -> dict[str, Any]:
        return {"statements": self.statements, "revenue": self.revenue, "differences": list(self.differences)}


def _product_of(decision: JobDecided) -> str:
    """A job sells as the product (price class) of the first dataset it names."""
    per = decision.details.get("per_dataset") or {}
    first = per.get(decision.datasets[0]) or {}
    return str(first.get("price_class") or "standard")


def compare_statements(logged: dict[tuple[str, str], list[dict[str, Any]]],
                       rebuilt: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    """Differences between the broker's statements and the replay's, to the fen (empty: they match)."""
    out = []
    for key in sorted(set(logged) | set(rebuilt)):
        a = {line["job_id"]: line for line in logged.get(key, [])}
        b = {line["job_id"]: line for line in rebuilt.get(key, [])}
        for job in sorted(set(a) | set(b)):
            if job not in b:
                out.append(f"license {key[0]} {key[1]}: job {job} is on the broker's statement only")
            elif job not in a:
                out.append(f"license {key[0]} {key[1]}: job {job} is on the replayed statement only")
            elif (a[job]["amount"], a[job]["lines"], a[job]["status"]) != (b[job]["amount"], b[job]["lines"], b[job]["status"]):
                out.append(f"license {key[0]} {key[1]}: job {job} is {a[job]['amount']} CNY on the broker's statement, "
                           f"{b[job]['amount']} CNY replayed")
        ta = sum((Decimal(x["amount"]) for x in a.values()), Decimal(0))
        tb = sum((Decimal(x["amount"]) for x in b.values()), Decimal(0))
        if ta != tb:
            out.append(f"license {key[0]} {key[1]}: total {ta:.2f} CNY on the broker's statement, {tb:.2f} CNY replayed")
    return out


def revenue_report(book: BillingBook, period: str) -> dict[str, Any]:
    """Revenue credited per department and dataset in ``period`` (``YYYY-MM`` or ``YYYY``), and the
    operating body's year against its maximum allowed revenue, with the excess carried as a
    deduction into the next year."""
    year = period[:4]
    rows: dict[tuple[str, str], Decimal] = {}
    for (p, ds), amount in book.revenue.items():
        if p == period or (len(period) == 4 and p.startswith(period)):
            key = (book.departments.get(ds, ""), ds)
            rows[key] = rows.get(key, Decimal(0)) + amount
    by_year: dict[str, Decimal] = {}
    for (p, _), amount in book.revenue.items():
        by_year[p[:4]] = by_year.get(p[:4], Decimal(0)) + amount
    carried = Decimal(0)
    years = []
    for y in sorted(set(by_year) | set(book.catalogue.allowed_revenue) | {year}):
        revenue = by_year.get(y, Decimal(0))
        allowed = book.catalogue.allowed_revenue.get(y)
        net = revenue - carried
        excess = max(net - allowed, Decimal(0)) if allowed is not None else Decimal(0)
        years.append({"year": y, "revenue": f"{revenue:.2f}", "deduction_carried_in": f"{carried:.2f}",
                      "net_revenue": f"{net:.2f}", "allowed_revenue": f"{allowed:.2f}" if allowed is not None else "",
                      "excess_carried_to_next_year": f"{excess:.2f}"})
        carried = excess
    departments: dict[str, Decimal] = {}
    for (dept, _), amount in rows.items():
        departments[dept] = departments.get(dept, Decimal(0)) + amount
    return {
        "period": period, "rule": book.catalogue.revenue_rule,
        "datasets": [{"department": d, "dataset": ds, "revenue": f"{a:.2f}"} for (d, ds), a in sorted(rows.items())],
        "departments": [{"department": d, "revenue": f"{a:.2f}"} for d, a in sorted(departments.items())],
        "total": f"{sum(rows.values(), Decimal(0)):.2f}",
        "years": years,
        "year": next(y for y in years if y["year"] == year),
    }
