"""The broker's side of charging: the catalogue in force, quotes, holds, settlements, releases.

The catalogue lives in the log only. The broker keeps a copy rebuilt from the log's
``catalogue_changed`` entries (:meth:`BrokerBilling.catalogue`, read incrementally from where
it last stopped, so replicas sharing one log agree), and a change is validated against it
with the same :meth:`~yumen.policy.Catalogue.apply` the auditor's replay runs, then
logged; nothing else holds it.

A job's charge follows its states (docs/billing.md), each step one ``charge`` entry written in
the transaction that changes the job (:meth:`~yumen.broker._core.Broker.recorded`):

* accepted → ``hold`` of the quote: one job and the ε allowed on each dataset, at the unit
  prices in force at that moment (recorded in the job, so it is never repriced);
* succeeded, or failed after a department read data → ``settle`` from the departments'
  signed metering at the held unit prices, split to the datasets that served it;
* cancelled, or refused/failed before any department read data → ``release``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import threading
from decimal import Decimal
from fractions import Fraction
from typing import Any

from yumen.audit import CatalogueChanged, ChargeRecorded
from yumen.errors import Code, YumenError
from yumen.identity import Identity, Role
from yumen.jobs import format_epsilon
from yumen.policy import (
    Catalogue,
    CatalogueChange,
    metered_quantities,
    plain,
    price_lines,
    quoted_quantities,
    split_fen,
    total_of,
)

log = logging.getLogger(__name__)

__all__ = ["BrokerBilling", "seed_catalogue"]

_CHANGERS = (Role.ADMIN, Role.OPERATING_BODY)


def _stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _eps(text: str) -> Decimal:
    f = Fraction(text)
    return Decimal(f.numerator) / Decimal(f.denominator)


class BrokerBilling:
    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self._catalogue = Catalogue()
        self._seen = 0
        self._lock = threading.Lock()

    # -- the catalogue -----------------------------------------------------------------------
    def catalogue(self, size: int | None = None) -> Catalogue:
        """The catalogue as the log's first ``size`` entries (default: all committed) leave it."""
        tlog = self.broker.audit.tlog
        with self._lock:
            end = tlog.size if size is None else size
            if end > self._seen:
                for index, entry in tlog.stored_entries(self._seen, end):
                    if isinstance(entry, CatalogueChanged):
                        change = CatalogueChange(kind=entry.kind, by=entry.changed_by, role=entry.role, fields=entry.fields)
                        self._catalogue.apply(change, at=dt.datetime.fromisoformat(entry.time.replace("Z", "+00:00")),
                                              index=index)
                self._seen = end
            return self._catalogue

    def _catalogue_within(self, conn: Any) -> Catalogue:
        """The catalogue as the shared log has it now, read under the caller's transaction (which
        holds the log's write lock, so no other replica can change it meanwhile). Entries this
        transaction appended and has not committed yet (with group commit, other requests'
        entries of the same batch too) count, in log order, but never reach the cache: the
        batch may still roll back."""
        tlog = self.broker.audit.tlog
        end = tlog.size_within(conn)
        committed = min(tlog.stored_size(), end)
        catalogue = self.catalogue(committed)
        pending = [(i, e) for i, e in tlog.entries_within(conn, committed, end) if isinstance(e, CatalogueChanged)]
        if not pending:
            return catalogue
        catalogue = copy.deepcopy(catalogue)
        for index, entry in pending:
            change = CatalogueChange(kind=entry.kind, by=entry.changed_by, role=entry.role, fields=entry.fields)
            catalogue.apply(change, at=dt.datetime.fromisoformat(entry.time.replace("Z", "+00:00")), index=index)
        return catalogue

    def change(self, identity: Identity, kind: str, fields: dict[str, str]) -> dict[str, Any]:
        """Validate one catalogue change against the catalogue in force and log it; refused whole otherwise."""
        if identity.role not in _CHANGERS:
            raise YumenError(Code.PERMISSION_DENIED,
                             "the catalogue is changed by the authorizing body's administrator (caps, revenue) and the "
                             "operating body (actual prices)")
        fields = {k: str(v) for k, v in fields.items() if str(v) != ""}
        CatalogueChange(kind=kind, by=identity.name, role=identity.role.value, fields=fields)  # kind and role, early
        with self.broker.recorded() as conn:
            at = _now()
            if kind in ("cap", "price", "authorization") and fields.get("start", "now") == "now":
                fields["start"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")  # effective from now (to the second)
            change = CatalogueChange(kind=kind, by=identity.name, role=identity.role.value, fields=fields)
            trial = copy.deepcopy(self._catalogue_within(conn))
            trial.apply(change, at=at)  # raises with the reason; nothing is appended then
            index = self.broker.audit.billing(CatalogueChanged(
                time=_stamp(at), kind=change.kind, changed_by=change.by, role=change.role, fields=dict(change.fields)))
        log.info("catalogue %s by %s logged at %d", kind, identity.name, index)
        return {"log_index": index, **change.to_dict()}

    def seed(self, changes: list[dict[str, Any]]) -> int:
        """At a first start (the log has no catalogue yet): log the configured catalogue, as
        role ``seed``, effective from now. Returns how many changes were logged."""
        with self.broker.recorded() as conn:
            catalogue = self._catalogue_within(conn)
            if catalogue.history:
                return 0
            trial = copy.deepcopy(catalogue)
            at = _now()
            start = at.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
            entries = []
            for c in changes:
                fields = {k: str(v) for k, v in c.items() if k != "kind"}
                if c["kind"] in ("cap", "price", "authorization"):
                    fields.setdefault("start", start)
                change = CatalogueChange(kind=c["kind"], by=self.broker.id, role="seed", fields=fields)
                trial.apply(change, at=at)
                entries.append(CatalogueChanged(time=_stamp(at), kind=change.kind, changed_by=change.by,
                                                role="seed", fields=dict(change.fields)))
            for e in entries:
                self.broker.audit.billing(e)
        return len(entries)

    # -- quotes and holds --------------------------------------------------------------------
    def quote(self, *, product: str, purpose: str, epsilon: Fraction, datasets: int,
              at: dt.datetime | None = None, catalogue: Catalogue | None = None) -> dict[str, Any]:
        cat = catalogue or self.catalogue()
        rates = cat.in_force(product, purpose, at or _now())
        lines = price_lines(rates, quoted_quantities(epsilon=_eps(format_epsilon(epsilon)), datasets=datasets))
        return {"product": product, "purpose": purpose, "currency": "CNY", "amount": str(total_of(lines)),
                "lines": lines, "rates": {u: [plain(p), plain(c)] for u, (p, c) in rates.items()},
                "metered_units": sorted(set(rates) - {"job", "epsilon"}),
                "rounding": "each line to the fen, half up; the total is the sum of the lines"}

    def hold(self, conn: Any, job: Any) -> dict[str, Any]:
        """Quote ``job`` (a :class:`~yumen.broker._store.JobRecord` about to be created) at the
        catalogue in force now; returns what the job keeps of it (``decision["charge"]``)."""
        at = _now()
        req = job.request
        product = str((job.decision.get("per_dataset") or {}).get(req["datasets"][0], {}).get("price_class")
                      or job.decision.get("price_class") or "standard")
        catalogue = self._catalogue_within(conn)
        q = self.quote(product=product, purpose=req["purpose"], epsilon=Fraction(req["epsilon"]),
                       datasets=len(req["datasets"]), at=at, catalogue=catalogue)
        # the revenue rule in force at acceptance splits the settlement: like the prices, a later
        # change never reaches back to a job already accepted
        return {**q, "time": _stamp(at), "revenue_rule": catalogue.revenue_rule}

    def log_hold(self, job: Any) -> int:
        charge = job.decision["charge"]
        return self.broker.audit.billing(ChargeRecorded(
            time=charge["time"], job_id=job.job_id, kind="hold", license_id=job.license, operator=job.operator,
            product=charge["product"], purpose=job.request["purpose"], amount=plain(Decimal(charge["amount"])),
            currency="CNY", details={"lines": charge["lines"], "rates": charge["rates"],
                                     "datasets": list(job.request["datasets"]), "revenue_rule": charge["revenue_rule"]},
        ))

    # -- settlement ----------------------------------------------------------------------------
    def close(self, job: Any) -> dict[str, Any] | None:
        """Settle or release ``job``'s hold (inside the caller's :meth:`recorded` transaction);
        returns the bill, or None for a job accepted before charges were held."""
        charge = (job.decision or {}).get("charge")
        if charge is None:
            return None
        from yumen.tickets import Receipt

        receipts = [Receipt.from_dict(json.loads(p["payload"])) for p in self.broker.store.partials(job.job_id).values()]
        touched = [r for r in receipts if r.status != "refused"]
        datasets = sorted({r.dataset for r in touched}) or list(job.request["datasets"])
        departments = sorted({r.department for r in touched})
        common = dict(job_id=job.job_id, license_id=job.license, operator=job.operator, product=charge["product"],
                      purpose=job.request["purpose"], currency="CNY")
        if not touched:
            self.broker.audit.billing(ChargeRecorded(kind="release", amount="0", **common,
                                                     details={"datasets": datasets, "held": charge["amount"]}))
            return {"amount": "0.00", "currency": "CNY", "status": "released"}
        rates = {u: (Decimal(p), Decimal(c)) for u, (p, c) in charge["rates"].items()}
        quantities = metered_quantities(
            (r.status, _eps(format_epsilon(r.epsilon_charged) if r.epsilon_charged else "0"), r.metering) for r in touched)
        lines = price_lines(rates, quantities)
        amount = total_of(lines)
        weights: dict[str, Decimal] = {}
        rule = charge["revenue_rule"]
        for r in touched:
            w = _eps(format_epsilon(r.epsilon_charged) if r.epsilon_charged else "0") if rule == "epsilon" else Decimal(1)
            weights[r.dataset] = weights.get(r.dataset, Decimal(0)) + w
        shares = {k: str(v) for k, v in split_fen(amount, weights).items()}
        self.broker.audit.billing(ChargeRecorded(
            kind="settle", amount=plain(amount), **common,
            details={"lines": lines, "datasets": datasets, "departments": departments, "shares": shares}))
        return {"amount": str(amount), "currency": "CNY", "status": "settled", "product": charge["product"],
                "purpose": job.request["purpose"],
                "lines": "; ".join(f"{x['unit']} {x['quantity']} × {x['unit_price']} = {x['amount']}" for x in lines)}


def seed_catalogue(path: Any) -> list[dict[str, Any]]:
    """The catalogue a first start logs, from a TOML file (policy/default_prices.toml)."""
    import tomllib
    from pathlib import Path

    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise YumenError(Code.CONFIG, f"cannot read the price catalogue {path}: {e}") from None
    out: list[dict[str, Any]] = []
    if "revenue_rule" in raw:
        out.append({"kind": "revenue_rule", "rule": str(raw["revenue_rule"])})
    for year, amount in (raw.get("allowed_revenue") or {}).items():
        out.append({"kind": "allowed_revenue", "year": str(year), "amount": str(amount)})
    for auth in raw.get("authorization") or []:
        out.append({"kind": "authorization", **{k: str(v) for k, v in auth.items()}})
    for product, purposes in (raw.get("products") or {}).items():
        for purpose, units in purposes.items():
            for unit, d in units.items():
                out.append({"kind": "cap", "product": product, "purpose": purpose, "unit": unit, "amount": str(d["cap"])})
                out.append({"kind": "price", "product": product, "purpose": purpose, "unit": unit,
                            "amount": str(d["price"])})
    return out
