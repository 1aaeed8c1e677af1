"""Post-processing of released values, shared by the broker and the operator's SDK.

Everything here works on values that are already differentially private, so it costs
no privacy budget.
"""

from __future__ import annotations

from typing import Any

__all__ = ["means_from_parts"]


def means_from_parts(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Divide noisy sums by noisy counts, group by group (post-processing: no extra ε).

    The half-width follows from the parts' half-widths: with |Δs| ≤ a_s and |Δc| ≤ a_c,
    |s/c − S/C| ≤ (a_s + |s/c|·a_c) / (c − a_c) when c > a_c. When the noisy count is
    within its own half-width of zero the group is too small for that bound, and the
    half-width reported is |s/c| + a_s: a flag that the mean is not informative.
    """
    sums = {v["group"]: v for v in values if v["name"] == "sum"}
    counts = {v["group"]: v for v in values if v["name"] == "count"}
    out = []
    for group, s in sums.items():
        c = counts[group]
        n = max(c["value"], 1.0)
        mean = s["value"] / n
        margin = c["value"] - c["ci95"]
        ci = (s["ci95"] + abs(mean) * c["ci95"]) / margin if margin > 0 else abs(mean) + s["ci95"]
        out.append({"name": "mean", "group": group, "value": mean, "noise_scale": s["noise_scale"] / n, "ci95": ci})
    return out
