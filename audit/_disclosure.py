"""The yearly public disclosure and the departments' query logs, from the log alone.

The national rules ask the implementing body and the operating body to disclose, each year
by the end of March: who they are, what was authorized, the price caps, the operators, the
product and service list and the actual prices. Beside those, the page shows per dataset
the jobs by purpose and operator, the ε spent each month against the dataset's cap, and the
revenue credited to it.

The HTML page is one self-contained file: no script, no font, no image or style from the
network (a Content-Security-Policy of ``default-src 'none'`` says so to the browser); the
charts are inline SVG drawn here. Every figure on the page carries a ``data-figure`` name,
so a test can read each one back and check it against totals it computes from the log.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from ._entries import ChargeRecorded, Entry, JobDecided, JobExecuted, LicenseChanged

__all__ = ["disclosure", "query_log", "render_html", "write_disclosure"]

_MONTHS = [f"{m:02d}" for m in range(1, 13)]


def _eps_str(f: Fraction) -> str:
    d = Decimal(f.numerator) / Decimal(f.denominator)
    return format(d.quantize(Decimal("0.000001")).normalize(), "f")


def disclosure(entries: Iterable[tuple[int, Entry]], book: Any, ctx: Any, year: str) -> dict[str, Any]:
    """The disclosure of ``year`` as a JSON-ready document (see the module docstring)."""
    from yumen.policy import FREE_PURPOSES, UNITS

    entries = list(entries)
    cat = book.catalogue
    listing = cat.listing()
    in_year = [r for r in listing if r["from"][:4] <= year and (not r["until"] or r["until"][:4] >= year)]
    operators = sorted({(e.operator, e.license_id) for _, e in entries if isinstance(e, LicenseChanged) and e.action == "issued"})
    datasets: dict[str, dict[str, Any]] = {}

    def ds(name: str) -> dict[str, Any]:
        return datasets.setdefault(name, {
            "dataset": name, "department": book.departments.get(name, ""), "jobs": {}, "jobs_total": 0,
            "epsilon_by_month": {m: Fraction(0) for m in _MONTHS}, "epsilon_cap": "", "epsilon_cap_period_days": 0,
            "revenue": Decimal(0)})

    for _, e in entries:
        if isinstance(e, JobDecided) and e.allowed and e.time[:4] == year and not e.details.get("recovered"):
            for name in e.datasets:
                d = ds(name)
                key = f"{e.purpose}|{e.operator}"
                d["jobs"][key] = d["jobs"].get(key, 0) + 1
                d["jobs_total"] += 1
                ob = ((e.details.get("per_dataset") or {}).get(name) or {}).get("obligations") or e.obligations
                if ob.get("dataset_epsilon_cap") and ob["dataset_epsilon_cap"] != "0":
                    d["epsilon_cap"] = ob["dataset_epsilon_cap"]
                    d["epsilon_cap_period_days"] = int(ob.get("dataset_period_days") or 0)
        elif isinstance(e, JobExecuted) and e.time[:4] == year and e.details.get("status") != "refused":
            ds(e.dataset_id)["epsilon_by_month"][e.time[5:7]] += Fraction(e.epsilon_charged)
    for (period, name), amount in book.revenue.items():
        if period[:4] == year:
            ds(name)["revenue"] += amount
    per_dataset = []
    for name in sorted(datasets):
        d = datasets[name]
        per_dataset.append({
            "dataset": name, "department": d["department"], "jobs_total": d["jobs_total"],
            "jobs": [{"purpose": k.split("|")[0], "operator": k.split("|")[1], "jobs": n} for k, n in sorted(d["jobs"].items())],
            "epsilon_by_month": {f"{year}-{m}": _eps_str(v) for m, v in d["epsilon_by_month"].items()},
            "epsilon_total": _eps_str(sum(d["epsilon_by_month"].values(), Fraction(0))),
            "epsilon_cap": d["epsilon_cap"], "epsilon_cap_period_days": d["epsilon_cap_period_days"],
            "revenue": f"{d['revenue']:.2f}",
        })
    charges = [e for _, e in entries if isinstance(e, ChargeRecorded) and e.kind == "settle" and e.time[:4] == year]
    products = sorted({r["product"] for r in listing})
    return {
        "year": year,
        "rules": "national rules for public data authorized operation (2025)",
        "implementing_body": sorted({a["implementing_body"] for a in cat.authorizations}),
        "authorizations": cat.authorizations,
        "operating_bodies": sorted({a["operating_body"] for a in cat.authorizations}),
        "operators": [{"organization": o, "license": lic} for o, lic in operators],
        "free_purposes": list(FREE_PURPOSES),
        "products": [{"product": p, "units": sorted({r["unit"] for r in listing if r["product"] == p}),
                      "unit_descriptions": {u: UNITS[u] for u in sorted({r["unit"] for r in listing if r["product"] == p})}}
                     for p in products],
        "caps": [r for r in in_year if r["kind"] == "cap"],
        "prices": [r for r in in_year if r["kind"] == "price"],
        "revenue_rule": cat.revenue_rule,
        "allowed_revenue": f"{cat.allowed_revenue[year]:.2f}" if year in cat.allowed_revenue else "",
        "revenue_total": f"{sum((Decimal(c.amount) for c in charges), Decimal(0)):.2f}",
        "jobs_charged": len(charges),
        "datasets": per_dataset,
    }


def query_log(entries: Iterable[tuple[int, Entry]], book: Any, department: str, year: str) -> list[dict[str, Any]]:
    """Every job on ``department``'s datasets in ``year``: id, time, operator, purpose, rule, status, ε, log index."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for index, e in entries:
        if isinstance(e, JobDecided) and e.time[:4] == year:
            for name in e.datasets:
                if book.departments.get(name) != department:
                    continue
                key = (e.job_id, name)
                per = (e.details.get("per_dataset") or {}).get(name) or {}
                if e.allowed and key not in rows:
                    rows[key] = {"job_id": e.job_id, "time": e.time, "dataset": name, "operator": e.operator,
                                 "purpose": e.purpose, "rule": per.get("rule") or e.matched_rule, "status": "allowed",
                                 "epsilon": "0", "log_index": index}
                elif not e.allowed and key in rows:
                    rows[key]["status"] = "cancelled"
                elif not e.allowed:
                    rows[key] = {"job_id": e.job_id, "time": e.time, "dataset": name, "operator": e.operator,
                                 "purpose": e.purpose, "rule": e.matched_rule, "status": "denied", "epsilon": "0",
                                 "log_index": index}
        elif isinstance(e, JobExecuted) and (e.job_id, e.dataset_id) in rows:
            row = rows[(e.job_id, e.dataset_id)]
            row["status"] = str(e.details.get("status") or "ok")
            row["epsilon"] = e.epsilon_charged
            row["log_index"] = index
    return sorted(rows.values(), key=lambda r: (r["time"], r["job_id"], r["dataset"]))


# -- the page -----------------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _chart(d: dict[str, Any], name: str) -> str:
    """ε per month as bars, the dataset's cap (per its period) as a line; inline SVG."""
    months = list(d["epsilon_by_month"].items())
    values = [Decimal(v) for _, v in months]
    cap = Decimal(d["epsilon_cap"]) if d["epsilon_cap"] else Decimal(0)
    top = max([*values, cap, Decimal(1)])
    w, h, pad = 480, 160, 24
    bw = (w - 2 * pad) / 12
    parts = [f'<svg class="chart" data-chart="{_e(name)}" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 30}" '
             f'viewBox="0 0 {w} {h + 30}" role="img" aria-label="ε spent per month on {_e(name)}">',
             f'<rect x="0" y="0" width="{w}" height="{h + 30}" fill="#ffffff"/>',
             f'<line x1="{pad}" y1="{h}" x2="{w - pad}" y2="{h}" stroke="#333333"/>']
    for i, ((month, value), v) in enumerate(zip(months, values)):
        bar = float(v / top) * (h - pad)
        x = pad + i * bw + 2
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{h - bar:.1f}" width="{bw - 4:.1f}" height="{bar:.1f}" fill="#1f6fb2">'
                     f'<title>{_e(month)}: ε {_e(value)}</title></rect>')
        parts.append(f'<text x="{x + (bw - 4) / 2:.1f}" y="{h + 14}" font-size="9" text-anchor="middle">{month[5:]}</text>')
    if cap:
        y = h - float(cap / top) * (h - pad)
        parts.append(f'<line class="cap" x1="{pad}" y1="{y:.1f}" x2="{w - pad}" y2="{y:.1f}" stroke="#c0392b" '
                     f'stroke-width="2" stroke-dasharray="6 3"/>')
        parts.append(f'<text x="{w - pad}" y="{y - 4:.1f}" font-size="10" text-anchor="end" fill="#c0392b">'
                     f'cap ε {_e(d["epsilon_cap"])} per {d["epsilon_cap_period_days"]} days</text>')
    parts.append("</svg>")
    return "".join(parts)


def _overall(doc: dict[str, Any]) -> dict[str, Any]:
    """ε per month summed over every dataset (no single cap applies to the sum)."""
    months: dict[str, Decimal] = {}
    for d in doc["datasets"]:
        for m, v in d["epsilon_by_month"].items():
            months[m] = months.get(m, Decimal(0)) + Decimal(v)
    if not months:
        months = {f"{doc['year']}-{m}": Decimal(0) for m in _MONTHS}
    return {"epsilon_by_month": {m: format(v.normalize(), "f") for m, v in sorted(months.items())}, "epsilon_cap": "",
            "epsilon_cap_period_days": 0}


def _rows(rows: list[dict[str, Any]], cols: list[str], figure: str = "") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            attr = f' data-figure="{_e(figure.format(**r))}:{_e(c)}"' if figure else ""
            cells.append(f"<td{attr}>{_e(r.get(c, ''))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(cols)}">none</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(doc: dict[str, Any]) -> str:
    y = doc["year"]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>Public data authorized operation: disclosure {_e(y)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #999;padding:.25em .6em;text-align:left}th{background:#eef}"
        "section.dataset{border-top:2px solid #1f6fb2;margin-top:1.5em}.figure{font-weight:bold}</style>",
        "</head><body>",
        f"<h1>Disclosure {_e(y)}: public data authorized operation</h1>",
        f"<p>Under the {_e(doc['rules'])}. Rebuilt from the verifiable transparency log.</p>",
        f'<h2>At a glance</h2><p>Revenue {_e(y)}: {_e(doc["revenue_total"])} CNY from {doc["jobs_charged"]} jobs; '
        f'{len(doc["datasets"])} datasets served. ε spent per month on all datasets together:</p>' + _chart(_overall(doc), "all datasets"),
        "<h2>Implementing body</h2><ul>" + "".join(f"<li>{_e(b)}</li>" for b in doc["implementing_body"]) + "</ul>",
        "<h2>Authorizations</h2>" + _rows(doc["authorizations"], ["implementing_body", "operating_body", "scope", "start", "end"]),
        "<h2>Operators</h2><h3>Operating bodies</h3><ul>" + "".join(f"<li>{_e(b)}</li>" for b in doc["operating_bodies"]) + "</ul>",
        "<h3>Licensed operators</h3>" + _rows(doc["operators"], ["organization", "license"]),
        "<h2>Products and services</h2>" + _rows(
            [{"product": p["product"], "units": ", ".join(f"{u} ({p['unit_descriptions'][u]})" for u in p["units"])}
             for p in doc["products"]], ["product", "units"]),
        f"<p>Free of charge: {_e(', '.join(doc['free_purposes']))} use.</p>",
        "<h2>Price caps (set by the authorizing body)</h2>"
        + _rows(doc["caps"], ["product", "purpose", "unit", "amount", "from", "until", "by"]),
        "<h2>Actual prices (set by the operating body)</h2>"
        + _rows(doc["prices"], ["product", "purpose", "unit", "amount", "from", "until", "by"]),
        "<h2>Revenue</h2><table><tbody>"
        f'<tr><th>revenue {_e(y)} (CNY)</th><td data-figure="revenue_total">{_e(doc["revenue_total"])}</td></tr>'
        f'<tr><th>jobs charged</th><td data-figure="jobs_charged">{doc["jobs_charged"]}</td></tr>'
        f'<tr><th>maximum allowed revenue (CNY)</th><td>{_e(doc["allowed_revenue"] or "not set")}</td></tr>'
        f'<tr><th>revenue credited to datasets by</th><td>{_e(doc["revenue_rule"])}</td></tr></tbody></table>',
        "<h2>Per dataset</h2>",
    ]
    for d in doc["datasets"]:
        name = d["dataset"]
        out.append(f'<section class="dataset" id="ds-{_e(name)}"><h3>{_e(name)} ({_e(d["department"])})</h3>')
        out.append(f'<p>jobs: <span class="figure" data-figure="{_e(name)}:jobs_total">{d["jobs_total"]}</span>; '
                   f'ε spent: <span class="figure" data-figure="{_e(name)}:epsilon_total">{_e(d["epsilon_total"])}</span>; '
                   f'revenue credited: <span class="figure" data-figure="{_e(name)}:revenue">{_e(d["revenue"])}</span> CNY</p>')
        out.append("<h4>Jobs by purpose and operator</h4>"
                   + _rows([{**j, "dataset": name} for j in d["jobs"]], ["purpose", "operator", "jobs"],
                           figure="{dataset}:{purpose}:{operator}"))
        out.append("<h4>ε spent per month against the cap</h4>" + _chart(d, name))
    out.append("</body></html>")
    return "\n".join(out)


def write_disclosure(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    j, h = out / f"disclosure-{doc['year']}.json", out / f"disclosure-{doc['year']}.html"
    j.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    h.write_text(render_html(doc), encoding="utf-8")
    return j, h
