"""The price catalogue under the national rules for public data authorized operation (2025).

The authorizing body (the data authority's administrator) sets a **cap** (上限收费标准) per
product, purpose and unit; the **operating body** (the operator of authorized operation)
sets the **actual price** at or below it. Both have effective dates. Public-interest use is
free (:data:`FREE_PURPOSES`): no cap or price may be set for it. The administrator also sets
how revenue is credited to the departments and datasets that served a job
(:data:`REVENUE_RULES`), the maximum allowed revenue per year, and the authorization the
yearly disclosure names.

A product is a dataset's price class (``standard``, ``premium``, ``free`` …): the dataset's
registration names the product it is sold as. Units (:data:`UNITS`): per job, per unit of ε
spent, per second held or run, per CPU second, per 1,000 rows scanned.

The catalogue is state rebuilt from the log alone: every change is one ``catalogue_changed``
entry, and :meth:`Catalogue.apply` is the one function both the broker (before it logs a
change) and the auditor's replay (on every logged change) run, so the two cannot disagree
about what was in force when. Past jobs are never repriced: a change takes effect no earlier
than the moment it is made, and a job's charge uses the unit prices its hold recorded at
acceptance.

Money is exact :class:`~decimal.Decimal` yuan (CNY). **One rounding rule**: each line of a
charge (quantity × unit price) is rounded to the fen (0.01 CNY) half up
(``ROUND_HALF_UP``), and a charge is the sum of its rounded lines, so lines always add up
to the total. Revenue shares are whole fen, split by largest remainder
(:func:`split_fen`), so they add up exactly to the charge.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from yumen.errors import Code, YumenError, echo

__all__ = [
    "CHANGE_KINDS",
    "FEN",
    "FREE_PURPOSES",
    "PAID_PURPOSES",
    "REVENUE_RULES",
    "UNITS",
    "Catalogue",
    "CatalogueChange",
    "Period",
    "metered_quantities",
    "money",
    "parse_money",
    "plain",
    "price_lines",
    "quoted_quantities",
    "split_fen",
    "total_of",
]

FEN = Decimal("0.01")
_MAX_MONEY = Decimal(10) ** 12
UNITS: dict[str, str] = {
    "job": "per job",
    "epsilon": "per unit of ε spent",
    "second": "per second held (algorithms: the fixed time their limits reserve) or run (queries)",
    "cpu_second": "per CPU second (algorithms: the fixed time their limits reserve)",
    "thousand_rows": "per 1,000 rows scanned (queries)",
}
FREE_PURPOSES = ("public-interest",)  # public-interest and public-governance use: free by the national rules
PAID_PURPOSES = ("research", "commercial")
REVENUE_RULES = ("epsilon", "equal")  # in proportion to ε spent per dataset | equal per dataset served
CHANGE_KINDS = ("cap", "price", "revenue_rule", "allowed_revenue", "authorization")
_ROLE_OF_KIND = {"cap": "admin", "price": "operating-body", "revenue_rule": "admin", "allowed_revenue": "admin",
                 "authorization": "admin"}
_FAR = dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc)


def _bad(message: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, message, hint=hint)


def parse_money(value: Any, what: str) -> Decimal:
    """A non-negative decimal amount of yuan with at most 4 places (a unit price may be below a fen)."""
    if isinstance(value, float) or isinstance(value, bool):
        raise _bad(f"{what} {value!r} must be written as a decimal string", "e.g. \"12.50\"")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise _bad(f"{what} {echo(str(value))} is not a decimal number", "write it like 12.50 (yuan)") from None
    if not d.is_finite():
        raise _bad(f"{what} {echo(str(value))} is not a finite number", "write it like 12.50 (yuan)")
    if d < 0:
        raise _bad(f"{what} {echo(str(value))} is negative", "prices and caps are zero or more yuan")
    if d >= _MAX_MONEY:
        raise _bad(f"{what} {echo(str(value))} is too large", f"amounts are below {_MAX_MONEY} yuan")
    if d != d.quantize(Decimal("0.0001")):
        raise _bad(f"{what} {echo(str(value))} has more than 4 decimal places", "round it to 0.0001 yuan")
    return d.quantize(Decimal("0.0001")).normalize() if d else Decimal(0)


def money(d: Decimal) -> str:
    """An amount rounded to the fen (half up), as the log and statements write it: "12.50"."""
    return str(d.quantize(FEN, rounding=ROUND_HALF_UP))


def plain(d: Decimal) -> str:
    """An exact decimal as the log's decimal fields want it (no exponent, no trailing zeros)."""
    s = format(d.normalize(), "f")
    return s.rstrip("0").rstrip(".") if "." in s else s


def split_fen(total: Decimal, weights: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Split ``total`` (whole fen) in proportion to ``weights`` by largest remainder.

    Every share is a whole number of fen and the shares add up to ``total`` exactly. Ties of
    remainder go to the key that sorts first, so the split is the same everywhere.
    """
    fen = int((total / FEN).to_integral_exact())
    keys = sorted(weights)
    if not keys:
        return {}
    w = {k: weights[k] for k in keys}
    weight = sum(w.values(), Decimal(0))
    if weight <= 0:
        w = {k: Decimal(1) for k in keys}
        weight = Decimal(len(keys))
    floors: dict[str, int] = {}
    remainders: list[tuple[Decimal, str]] = []
    for k in keys:
        exact = Decimal(fen) * w[k] / weight
        floors[k] = int(exact.to_integral_value(rounding="ROUND_FLOOR"))
        remainders.append((exact - floors[k], k))
    left = fen - sum(floors.values())
    for _, k in sorted(remainders, key=lambda r: (-r[0], r[1]))[:left]:
        floors[k] += 1
    return {k: Decimal(v) * FEN for k, v in floors.items()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Period:
    """``[start, end)`` in UTC; ``end`` None: until further notice."""

    start: dt.datetime
    end: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.end is not None and self.end <= self.start:
            raise _bad(f"the effective period ends ({_fmt(self.end)}) before it starts ({_fmt(self.start)})",
                       "give --until after --from")

    def covers(self, at: dt.datetime) -> bool:
        return self.start <= at and (self.end is None or at < self.end)

    def overlaps(self, other: "Period") -> bool:
        return self.start < (other.end or _FAR) and other.start < (self.end or _FAR)


def _fmt(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value: str, what: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise _bad(f"{what} {echo(str(value))} is not a date or time", "write it like 2026-12-01 or 2026-12-01T08:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CatalogueChange:
    """One change of the catalogue, as its ``catalogue_changed`` log entry carries it.

    ``kind``: ``cap`` and ``price`` (``product``, ``purpose``, ``unit``, ``amount``, effective
    ``start``/``end``), ``revenue_rule`` (``rule``), ``allowed_revenue`` (``year``, ``amount``:
    the operating body's maximum allowed revenue that year), ``authorization`` (``implementing_body``,
    ``operating_body``, ``scope``, ``start``/``end``). ``by`` is who made it; ``role`` the role
    of their certificate, which must be the one the kind requires.
    """

    kind: str
    by: str
    role: str
    fields: Mapping[str, str]

    def __post_init__(self) -> None:
        if self.kind not in CHANGE_KINDS:
            raise _bad(f"unknown catalogue change {echo(self.kind)}", f"use one of {', '.join(CHANGE_KINDS)}")
        need = _ROLE_OF_KIND[self.kind]
        if self.role not in (need, "seed"):
            who = "the authorizing body's administrator" if need == "admin" else "the operating body"
            raise YumenError(Code.PERMISSION_DENIED, f"a {self.kind} is set by {who} ({need} certificate), not by the role {self.role!r}")
        if any(not isinstance(v, str) for v in self.fields.values()):
            raise _bad("catalogue change fields are strings")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "by": self.by, "role": self.role, "fields": dict(sorted(self.fields.items()))}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CatalogueChange":
        return cls(kind=str(d.get("kind", "")), by=str(d.get("by", "")), role=str(d.get("role", "")),
                   fields=dict(d.get("fields") or {}))


@dataclasses.dataclass(frozen=True)
class _Rate:
    amount: Decimal
    period: Period
    by: str
    index: int  # the log index of the change that set it (-1 before it is logged)


class Catalogue:
    """What the log's catalogue changes established so far; :meth:`apply` validates and applies one."""

    def __init__(self) -> None:
        self.caps: dict[tuple[str, str, str], list[_Rate]] = {}
        self.prices: dict[tuple[str, str, str], list[_Rate]] = {}
        self.revenue_rule = "epsilon"
        self.allowed_revenue: dict[str, Decimal] = {}  # year -> maximum allowed revenue
        self.authorizations: list[dict[str, str]] = []
        self.history: list[tuple[int, dict[str, Any]]] = []  # (log index, change with its time)

    # -- changes ---------------------------------------------------------------------------
    def apply(self, change: CatalogueChange, *, at: dt.datetime, index: int = -1) -> None:
        """Validate ``change`` against the catalogue as it stands at ``at`` and apply it; raises
        ``INVALID_ARGUMENT`` (the catalogue unchanged) when it breaks a rule."""
        f = change.fields
        if change.kind in ("cap", "price"):
            self._rate(change, at, index)
        elif change.kind == "revenue_rule":
            if f.get("rule") not in REVENUE_RULES:
                raise _bad(f"unknown revenue rule {echo(f.get('rule', ''))}", f"use one of {', '.join(REVENUE_RULES)}")
            self.revenue_rule = f["rule"]
        elif change.kind == "allowed_revenue":
            year = f.get("year", "")
            if not (year.isdigit() and len(year) == 4):
                raise _bad(f"year {echo(year)} is not a year", "write it like 2026")
            if int(year) < at.year and change.role != "seed":
                raise _bad(f"the allowed revenue of {year} cannot be set after that year ended")
            self.allowed_revenue[year] = parse_money(f.get("amount", ""), "the maximum allowed revenue")
        elif change.kind == "authorization":
            for name in ("implementing_body", "operating_body", "scope"):
                if not f.get(name, "").strip():
                    raise _bad(f"an authorization names its {name.replace('_', ' ')}")
            period = Period(start=_time(f.get("start", ""), "--from"), end=_time(f["end"], "--until") if f.get("end") else None)
            self.authorizations.append({**f, "start": _fmt(period.start), "end": _fmt(period.end) if period.end else ""})
        self.history.append((index, {**change.to_dict(), "at": _fmt(at)}))

    def _rate(self, change: CatalogueChange, at: dt.datetime, index: int) -> None:
        f = change.fields
        product, purpose, unit = f.get("product", ""), f.get("purpose", ""), f.get("unit", "")
        what = "cap" if change.kind == "cap" else "price"
        if not product or not product.replace("-", "").replace("_", "").isalnum():
            raise _bad(f"product {echo(product)} is not a product name", "products are datasets' price classes, e.g. standard")
        if purpose in FREE_PURPOSES:
            raise _bad(f"{purpose} use is free by the national rules; it has no {what}",
                       f"set {what}s for {', '.join(PAID_PURPOSES)}")
        if purpose not in PAID_PURPOSES:
            raise _bad(f"unknown purpose {echo(purpose)}", f"use one of {', '.join(PAID_PURPOSES)}")
        if unit not in UNITS:
            raise _bad(f"unknown unit {echo(unit)}", f"use one of {', '.join(UNITS)}")
        amount = parse_money(f.get("amount", ""), f"the {what}")
        period = Period(start=_time(f.get("start", ""), "--from"), end=_time(f["end"], "--until") if f.get("end") else None)
        if period.start < at.replace(microsecond=0) and change.role != "seed":
            raise _bad(f"the {what} would take effect at {_fmt(period.start)}, before now ({_fmt(at)}): "
                       "past jobs are never repriced", "give --from now or a later time")
        key = (product, purpose, unit)
        table = self.caps if change.kind == "cap" else self.prices
        rates = _place(table.get(key, []), period, what, key)
        new = _Rate(amount, period, change.by, index)
        trial = sorted([*rates, new], key=lambda r: r.period.start)
        if change.kind == "price":
            self._check_under_caps(key, [new], self.caps.get(key, []))
        else:
            self._check_under_caps(key, self.prices.get(key, []), trial)
        table[key] = trial

    @staticmethod
    def _check_under_caps(key: tuple[str, str, str], prices: Iterable[_Rate], caps: list[_Rate]) -> None:
        """Every price, at every moment it is in force, at or below the cap in force then."""
        for p in prices:
            moments = sorted({p.period.start, *(c.period.start for c in caps if p.period.covers(c.period.start))})
            for t in moments:
                cap = next((c for c in caps if c.period.covers(t)), None)
                label = f"{key[0]}/{key[1]} per {key[2]}"
                if cap is None:
                    raise _bad(f"no cap is in force for {label} at {_fmt(t)}; the price {plain(p.amount)} needs one",
                               "ask the authorizing body to set the cap first (`yumen billing cap`)")
                if p.amount > cap.amount:
                    raise _bad(f"the price {plain(p.amount)} yuan for {label} is above its cap {plain(cap.amount)} "
                               f"in force from {_fmt(cap.period.start)}",
                               "set a price at or below the cap, or lower the price before lowering the cap")
            if p.period.end is None and not any(c.period.end is None and c.period.start <= max(moments) for c in caps):
                raise _bad(f"the price for {key[0]}/{key[1]} per {key[2]} has no end but its cap ends",
                           "give the price an --until within the cap's period")

    # -- reading -----------------------------------------------------------------------------
    def in_force(self, product: str, purpose: str, at: dt.datetime) -> dict[str, tuple[Decimal, Decimal]]:
        """Unit → (actual price, cap) in force at ``at`` for a product and purpose; empty when free."""
        if purpose in FREE_PURPOSES:
            return {}
        out = {}
        for unit in UNITS:
            price = next((r for r in self.prices.get((product, purpose, unit), []) if r.period.covers(at)), None)
            cap = next((r for r in self.caps.get((product, purpose, unit), []) if r.period.covers(at)), None)
            if price is not None and cap is not None:
                out[unit] = (price.amount, cap.amount)
        return out

    def listing(self, at: dt.datetime | None = None) -> list[dict[str, str]]:
        """Every cap and price ever set, with its effective period (and whether in force at ``at``)."""
        rows = []
        for kind, table in (("cap", self.caps), ("price", self.prices)):
            for (product, purpose, unit), rates in sorted(table.items()):
                for r in rates:
                    rows.append({"kind": kind, "product": product, "purpose": purpose, "unit": unit,
                                 "amount": plain(r.amount), "from": _fmt(r.period.start),
                                 "until": _fmt(r.period.end) if r.period.end else "", "by": r.by,
                                 "log_index": str(r.index),
                                 "in_force": "yes" if at is not None and r.period.covers(at) else "no"})
        return rows


def _place(rates: list[_Rate], period: Period, what: str, key: tuple[str, str, str]) -> list[_Rate]:
    """The rates with ``period`` placed among them: the open-ended rate in force when it starts
    is closed at its start (a new rate supersedes it); any other overlap is refused."""
    out = []
    for r in rates:
        if r.period.end is None and r.period.start < period.start:
            r = dataclasses.replace(r, period=Period(start=r.period.start, end=period.start))
        if r.period.overlaps(period):
            raise _bad(f"the {what} for {key[0]}/{key[1]} per {key[2]} from {_fmt(period.start)} overlaps the one "
                       f"in force {_fmt(r.period.start)}–{_fmt(r.period.end) if r.period.end else 'open'}",
                       "choose effective dates that do not overlap")
        out.append(r)
    return out


# -- charges ---------------------------------------------------------------------------------
def price_lines(rates: Mapping[str, tuple[Decimal, Decimal]], quantities: Mapping[str, Decimal]) -> list[dict[str, str]]:
    """One line per priced unit with a quantity: quantity × unit price, rounded to the fen half up."""
    lines = []
    for unit in UNITS:
        q = quantities.get(unit, Decimal(0))
        if unit in rates and q > 0:
            price, cap = rates[unit]
            lines.append({"unit": unit, "quantity": plain(q), "unit_price": plain(price), "cap": plain(cap),
                          "amount": money(q * price)})
    return lines


def total_of(lines: Iterable[Mapping[str, str]]) -> Decimal:
    return sum((Decimal(line["amount"]) for line in lines), Decimal("0.00")).quantize(FEN)


def quoted_quantities(*, epsilon: Decimal, datasets: int) -> dict[str, Decimal]:
    """What a job is known to use before it runs: one job, and its ε on each dataset."""
    return {"job": Decimal(1), "epsilon": epsilon * datasets}


def metered_quantities(receipts: Iterable[tuple[str, Decimal, Mapping[str, Any]]]) -> dict[str, Decimal]:
    """Quantities from the departments' signed metering: ``(status, ε charged, metering)`` per dataset.

    A refused dataset read nothing and adds nothing. An algorithm's receipt carries no wall
    or CPU time (a timing channel, docs/privacy.md): its seconds and CPU seconds are the time
    its limits held (``held_ms``), fixed before any data was read. Queries meter their wall
    time, CPU time and rows scanned (the version's DP-released row count, in whole thousands,
    rounded up by the connector).
    """
    q = {u: Decimal(0) for u in UNITS}
    touched = False
    for status, eps, m in receipts:
        if status == "refused":
            continue
        touched = True
        q["epsilon"] += eps
        held = m.get("held_ms")
        q["second"] += Decimal(int(held if held is not None else m.get("wall_ms", 0))) / 1000
        q["cpu_second"] += Decimal(int(held if held is not None else m.get("cpu_ms", 0))) / 1000
        q["thousand_rows"] += Decimal(int(m.get("rows_scanned", 0))) / 1000
    if touched:
        q["job"] = Decimal(1)
    return q
