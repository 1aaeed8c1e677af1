"""Assembling a job's released result from the departments' receipts (broker side).

Everything here works on values the connectors already protected (DP-noised, or
encrypted under the operator's key), so combining them costs no privacy budget.
"""

from __future__ import annotations

import base64
import hashlib
import math
from fractions import Fraction
from typing import Any

from yumen.canonical import digest_of
from yumen.errors import Code, YumenError
from yumen.jobs import format_epsilon
from yumen.loss import epsilon_of_rho
from yumen.results import means_from_parts
from yumen.tickets import Receipt

from yumen.broker._store import JobRecord

__all__ = ["combine", "final_values", "min_group_size", "needs_counts", "needs_parts"]


def min_group_size(job: JobRecord) -> int:
    per = job.decision.get("per_dataset") or {}
    sizes = [int((d.get("obligations") or {}).get("min_group_size", 0)) for d in per.values()]
    return max(sizes, default=0)

def needs_parts(job: JobRecord) -> bool:
    """Whether connectors release a mean as (noisy sum, noisy count) for the broker or the
    operator to divide: needed to combine a mean across departments or under encryption."""
    q = job.request["query"]
    return q["aggregate"] == "mean" and (len(job.request["datasets"]) > 1 or "he_context" in job.request)


def needs_counts(job: JobRecord) -> bool:
    """Whether connectors release every group's noisy row count beside the statistic.

    Needed for every grouped aggregate (group-by, or a histogram's bins) when a minimum
    group size applies: groups are suppressed by their noisy count, which is
    post-processing and costs no further ε. (Under encryption the broker cannot read the
    counts; such jobs are refused at submission.)
    """
    q = job.request["query"]
    grouped = bool(q.get("group_by")) or q["aggregate"] == "histogram"
    return grouped and min_group_size(job) > 0 and "he_context" not in job.request


def privacy_loss(job: JobRecord, receipts: list[Receipt]) -> dict[str, str]:
    """What the job cost the most exposed person, as ε (and as ρ and δ under zCDP).

    Datasets that share a privacy-unit namespace hold the same people, so their charges add;
    datasets of different namespaces hold different people, so the cost is the largest of
    theirs (parallel composition). Under zCDP a namespace's ρ is reported with its (ε, δ).
    """
    per = job.decision.get("per_dataset") or {}
    spaces: dict[str, dict[str, Any]] = {}
    for r in receipts:
        budget = (per.get(r.dataset) or {}).get("budget") or {}
        ns = budget.get("namespace") or f"ns:dataset/{r.dataset}"
        entry = spaces.setdefault(ns, {"accounting": budget.get("accounting", "pure"),
                                       "delta": Fraction(budget["delta"]) if budget.get("delta") else Fraction(0),
                                       "amount": Fraction(0), "datasets": []})
        entry["amount"] += r.rho_charged if entry["accounting"] == "zcdp" else r.epsilon_charged
        entry["datasets"].append(r.dataset)
    worst: tuple[Fraction, str] = (Fraction(-1), "")
    out: dict[str, str] = {}
    for ns, e in sorted(spaces.items()):
        eps = e["amount"] if e["accounting"] == "pure" else epsilon_of_rho(e["amount"], e["delta"])
        if eps > worst[0]:
            worst = (eps, ns)
            if e["accounting"] == "zcdp":
                out.update(rho=f"{e['amount'].numerator}/{e['amount'].denominator}",
                           delta=f"{e['delta'].numerator}/{e['delta'].denominator}")
            else:
                out.pop("rho", None)
                out.pop("delta", None)
    eps, ns = worst
    out.update(epsilon=format_epsilon(eps) if eps > 0 else "0", namespace=ns.removeprefix("ns:"),
               accounting=spaces[ns]["accounting"] if ns else "pure",
               datasets=",".join(spaces[ns]["datasets"]) if ns else "")
    return out


def combine(job: JobRecord, parts: list[tuple[Receipt, bytes]]) -> dict[str, Any]:
    """Assemble the released result from the departments' partial results.

    One department: its released values as they are. Several: counts and sums add; the
    noise of independent parts adds in variance, so the reported noise scale and 95%
    half-width are the root-sum-square of the parts'. A mean over several departments
    (or under encryption) arrives as noisy sums and counts and is divided here (or by
    the operator, after decryption). Under encryption the broker adds ciphertexts it
    cannot read; the values stay 0 and the operator's SDK decrypts.
    """
    order = sorted(parts, key=lambda p: p[0].dataset)
    receipts = [r for r, _ in order]
    layouts = {tuple((v.name, v.group) for v in r.values) for r in receipts}
    if len(layouts) != 1:
        raise YumenError(Code.INTERNAL, "departments returned different result layouts")
    provenance = [{"dataset": r.dataset, "department": r.department, "dataset_version": r.dataset_version,
                   "receipt_digest": r.digest()} for r in receipts]
    loss = privacy_loss(job, receipts)
    body: dict[str, Any] = {
        "job_id": job.job_id, "mechanism": receipts[0].mechanism,
        "epsilon_spent": loss["epsilon"], "loss": loss,
        "provenance": provenance,
        "bill": {"amount": job.decision.get("price", "0"), "currency": "CNY",
                 "purpose": job.request["purpose"], "price_class": job.decision.get("price_class", "")},
    }
    summed = []
    for i, v0 in enumerate(receipts[0].values):
        vals = [r.values[i] for r in receipts]
        summed.append({"name": v0.name, "group": v0.group, "value": sum(v.value for v in vals),
                       "noise_scale": math.sqrt(sum(v.noise_scale ** 2 for v in vals)),
                       "ci95": math.sqrt(sum(v.ci95 ** 2 for v in vals))})
    if receipts[0].ciphertext_digest:
        from yumen.privacy import he_sum

        total = he_sum(job.he_context, [c for _, c in order])
        body["values"] = summed
        body["ciphertext"] = base64.b64encode(total).decode()
        body["ciphertext_digest"] = "sha256:" + hashlib.sha256(total).hexdigest()
    else:
        body["values"], body["suppressed_groups"] = final_values(job, summed)
    body["result_digest"] = digest_of({k: v for k, v in body.items() if k != "ciphertext"})
    return body

def final_values(job: JobRecord, summed: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Divide means, apply the minimum group size, and keep only what the job asked for."""
    q = job.request.get("query") or {}
    counted = "histogram" if q.get("aggregate") == "histogram" else "count"
    counts = {v["group"]: v["value"] for v in summed if v["name"] == counted}
    if q.get("aggregate") == "mean" and any(v["name"] == "sum" for v in summed):
        values = means_from_parts(summed)
    else:
        values = [v for v in summed if v["name"] == q.get("aggregate", v["name"])] if q else summed
    k = min_group_size(job)
    suppressed: list[str] = []
    if k and (q.get("group_by") or q.get("aggregate") == "histogram") and counts:
        suppressed = [g for g, c in counts.items() if c < k]
        values = [v for v in values if v["group"] not in suppressed]
    return values, suppressed
