"""``yumen billing …`` and ``yumen report …``: the price catalogue, statements, revenue, disclosure.

Catalogue changes go to the broker's BillingService (caps and revenue settings with an
administrator certificate, actual prices with an operating-body certificate). Statements,
revenue and reports are read from the log: from the live broker over the AuditService (an
auditor or administrator certificate), or from an export (``--from DIR``, as written by
``yumen audit export``). See docs/billing.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from yumen.errors import Code, YumenError, echo

__all__ = ["register"]

_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_YEAR = re.compile(r"^\d{4}$")


def _tls(args: argparse.Namespace) -> tuple[str, Any]:
    from yumen.rpc import TlsFiles

    missing = [n for n in ("ca", "cert", "key") if not getattr(args, n)]
    if missing:
        raise YumenError(Code.CONFIG, f"no {', '.join('--' + m for m in missing)} given for the broker {args.broker}",
                         hint="pass them or set YUMEN_CA, YUMEN_CERT and YUMEN_KEY")
    return args.broker, TlsFiles(ca=Path(args.ca), cert=Path(args.cert), key=Path(args.key))


def _entries(args: argparse.Namespace) -> list[tuple[int, Any]]:
    """The log's entries: from an export directory, or from the live broker."""
    if args.from_dir:
        from yumen.audit import entries_from_export

        if not (Path(args.from_dir) / "entries.jsonl").is_file():
            raise YumenError(Code.CONFIG, f"{args.from_dir} is not a log export (no entries.jsonl)",
                             hint="write one with `yumen audit export --out DIR`")
        return entries_from_export(args.from_dir)
    from yumen.audit import decode_entry
    from yumen.audit import AuditClient
    from yumen.rpc import secure_channel

    with secure_channel(*_tls(args)) as channel:
        client = AuditClient(channel)
        size = int(client.checkpoint().splitlines()[1])
        return [(i, decode_entry(leaf)) for i, leaf in client.leaves(0, size)]


def rebuild(entries: list[tuple[int, Any]]) -> tuple[Any, Any]:
    """Replay ``entries`` with the billing book (and the lifecycle checks): (book, context)."""
    from yumen.audit import BillingBook, replay

    book = BillingBook()
    seen: dict[str, Any] = {}

    class _Context:
        def on_entry(self, index: int, entry: Any, context: Any) -> None:
            seen["ctx"] = context

        def result(self) -> None:
            return None

    replay(entries, accumulators={"billing": book, "context": _Context()})
    return book, seen.get("ctx")


# -- catalogue changes ----------------------------------------------------------------------
def _change(args: argparse.Namespace, kind: str, fields: dict[str, str]) -> int:
    from yumen.rpc import call
    from yumen.rpc import secure_channel
    from yumen.v1 import billing_pb2, billing_pb2_grpc

    with secure_channel(*_tls(args)) as channel:
        out = call(billing_pb2_grpc.BillingServiceStub(channel).ChangeCatalogue,
                   billing_pb2.CatalogueChange(kind=kind, fields={k: v for k, v in fields.items() if v}), timeout=30)
    print(f"{kind} logged at index {out.log_index}")
    return 0


def _cmd_rate(args: argparse.Namespace) -> int:
    return _change(args, args.kind, {"product": args.product, "purpose": args.purpose, "unit": args.unit,
                                     "amount": args.amount, "start": args.start or "", "end": args.until or ""})


def _cmd_revenue_rule(args: argparse.Namespace) -> int:
    return _change(args, "revenue_rule", {"rule": args.rule})


def _cmd_allowed_revenue(args: argparse.Namespace) -> int:
    return _change(args, "allowed_revenue", {"year": args.year, "amount": args.amount})


def _cmd_authorize(args: argparse.Namespace) -> int:
    return _change(args, "authorization", {"implementing_body": args.implementing_body,
                                           "operating_body": args.operating_body, "scope": args.scope,
                                           "start": args.start or "", "end": args.until or ""})


def _cmd_catalogue(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from yumen.rpc import call
    from yumen.rpc import secure_channel
    from yumen.v1 import billing_pb2, billing_pb2_grpc

    with secure_channel(*_tls(args)) as channel:
        cat = call(billing_pb2_grpc.BillingServiceStub(channel).GetCatalogue, billing_pb2.GetCatalogueRequest(), timeout=30)
    if args.json:
        print(json.dumps(MessageToDict(cat, preserving_proto_field_name=True), indent=2, ensure_ascii=False))
        return 0
    print(f"free purposes: {', '.join(cat.free_purposes)}; revenue rule: {cat.revenue_rule}")
    _table([{"kind": i.kind, "product": i.product, "purpose": i.purpose, "unit": i.unit, "yuan": i.amount,
             "from": i.start, "until": i.end or "open", "in force": "yes" if i.in_force else "", "log": str(i.log_index)}
            for i in cat.items])
    return 0


# -- statements and revenue -------------------------------------------------------------------
def _table(rows: list[dict[str, str]]) -> None:
    if not rows:
        print("  (none)")
        return
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  " + "  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  " + "  ".join(str(r[c]).ljust(width[c]) for c in cols))


def statement_rows(lines: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One flat row per job (CSV and table): units, quantities, unit prices and caps joined by ``;``."""
    out = []
    for line in lines:
        idx = line["log_indices"]
        out.append({
            "job_id": line["job_id"], "time": line["time"], "status": line["status"], "purpose": line["purpose"],
            "product": line["product"], "unit": ";".join(x["unit"] for x in line["lines"]),
            "quantity": ";".join(x["quantity"] for x in line["lines"]),
            "unit_price": ";".join(x["unit_price"] for x in line["lines"]),
            "cap": ";".join(x["cap"] for x in line["lines"]), "amount": line["amount"],
            "datasets": ";".join(line["datasets"]), "departments": ";".join(line["departments"]),
            "log_indices": ";".join(f"{k}={v if not isinstance(v, list) else ','.join(map(str, v))}" for k, v in idx.items()),
        })
    return out


def statement(entries: list[tuple[int, Any]], license_id: str, period: str) -> dict[str, Any]:
    from decimal import Decimal

    from yumen.audit import LicenseChanged
    from yumen.audit import logged_statements

    if not _PERIOD.match(period):
        raise YumenError(Code.INVALID_ARGUMENT, f"period {echo(period)} is not a month", hint="write it like 2026-11")
    if not any(isinstance(e, LicenseChanged) and e.license_id == license_id for _, e in entries):
        raise YumenError(Code.NOT_FOUND, f"no license {echo(license_id)} in the log",
                         hint="list licenses with `yumen admin license list`")
    lines = sorted(logged_statements(entries).get((license_id, period), []), key=lambda x: (x["time"], x["job_id"]))
    total = sum((Decimal(x["amount"]) for x in lines), Decimal("0.00"))
    return {"license": license_id, "period": period, "currency": "CNY", "jobs": lines, "total": f"{total:.2f}",
            "rounding": "each line to the fen (0.01 CNY), half up; totals are sums of rounded lines"}


def _cmd_statement(args: argparse.Namespace) -> int:
    st = statement(_entries(args), args.license, args.period)
    if args.json:
        print(json.dumps(st, indent=2, ensure_ascii=False))
    elif args.csv:
        rows = statement_rows(st["jobs"])
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["job_id", "amount"])
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        print(f"statement for license {st['license']}, {st['period']} (CNY)")
        _table([{k: r[k] for k in ("job_id", "status", "purpose", "product", "unit", "quantity", "unit_price", "cap",
                                   "amount", "datasets", "departments", "log_indices")} for r in statement_rows(st["jobs"])])
        print(f"  total {st['total']} CNY for {len(st['jobs'])} jobs")
    return 0


def _cmd_revenue(args: argparse.Namespace) -> int:
    from yumen.audit import revenue_report

    if not (_PERIOD.match(args.period) or _YEAR.match(args.period)):
        raise YumenError(Code.INVALID_ARGUMENT, f"period {echo(args.period)} is not a month or a year",
                         hint="write it like 2026-11 or 2026")
    book, _ = rebuild(_entries(args))
    rep = revenue_report(book, args.period)
    if args.department:
        rep["datasets"] = [r for r in rep["datasets"] if r["department"] == args.department]
        rep["departments"] = [r for r in rep["departments"] if r["department"] == args.department]
    if args.json:
        print(json.dumps(rep, indent=2, ensure_ascii=False))
        return 0
    print(f"revenue credited in {rep['period']} (rule: {rep['rule']}), CNY")
    _table(rep["departments"])
    print("  by dataset:")
    _table(rep["datasets"])
    y = rep["year"]
    print(f"  year {y['year']}: revenue {y['revenue']}, deduction carried in {y['deduction_carried_in']}, "
          f"allowed {y['allowed_revenue'] or 'not set'}, excess carried to next year {y['excess_carried_to_next_year']}")
    return 0


def _cmd_disclosure(args: argparse.Namespace) -> int:
    from yumen.audit import disclosure, write_disclosure

    if not _YEAR.match(args.year):
        raise YumenError(Code.INVALID_ARGUMENT, f"year {echo(args.year)} is not a year", hint="write it like 2026")
    entries = _entries(args)
    book, ctx = rebuild(entries)
    doc = disclosure(entries, book, ctx, args.year)
    json_path, html_path = write_disclosure(doc, Path(args.out))
    print(f"disclosure for {args.year}: {json_path} and {html_path} (self-contained; open it offline)")
    return 0


def _cmd_queries(args: argparse.Namespace) -> int:
    from yumen.audit import query_log

    if not _YEAR.match(args.year):
        raise YumenError(Code.INVALID_ARGUMENT, f"year {echo(args.year)} is not a year", hint="write it like 2026")
    entries = _entries(args)
    book, _ = rebuild(entries)
    if args.department not in set(book.departments.values()):
        raise YumenError(Code.NOT_FOUND, f"no department {echo(args.department)} registered a dataset in the log")
    rows = query_log(entries, book, args.department, args.year)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif args.csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["job_id"])
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        _table(rows)
    return 0


def _add_conn(p: argparse.ArgumentParser, *, log: bool) -> None:
    g = p.add_argument_group("broker connection (mTLS)")
    g.add_argument("--broker", default=os.environ.get("YUMEN_BROKER", "127.0.0.1:7443"), metavar="HOST:PORT")
    g.add_argument("--ca", default=os.environ.get("YUMEN_CA"), metavar="FILE")
    g.add_argument("--cert", default=os.environ.get("YUMEN_CERT"), metavar="FILE")
    g.add_argument("--key", default=os.environ.get("YUMEN_KEY"), metavar="FILE")
    if log:
        p.add_argument("--from", dest="from_dir", metavar="DIR", help="read an export (yumen audit export) instead of the broker")


def register(subparsers: argparse._SubParsersAction) -> None:
    billing = subparsers.add_parser("billing", help="price catalogue, statements and revenue (docs/billing.md)")
    sub = billing.add_subparsers(dest="billing_command", metavar="SUBCOMMAND", required=True)

    cat = sub.add_parser("catalogue", help="the posted caps and actual prices")
    cat.add_argument("--json", action="store_true")
    _add_conn(cat, log=False)
    cat.set_defaults(func=_cmd_catalogue)

    for kind, who in (("cap", "the authorizing body's administrator"), ("price", "the operating body")):
        p = sub.add_parser(kind, help=f"set a {kind} (by {who})")
        p.add_argument("--product", required=True, help="a datasets' price class, e.g. standard")
        p.add_argument("--purpose", required=True, choices=["research", "commercial"])
        p.add_argument("--unit", required=True, help="job | epsilon | second | cpu_second | thousand_rows")
        p.add_argument("--amount", required=True, help="yuan, a decimal such as 12.50")
        p.add_argument("--from", dest="start", metavar="TIME", help="effective from (default: now; never earlier)")
        p.add_argument("--until", metavar="TIME", help="effective until (default: until changed)")
        _add_conn(p, log=False)
        p.set_defaults(func=_cmd_rate, kind=kind)

    rr = sub.add_parser("revenue-rule", help="how charges are credited to datasets (administrator)")
    rr.add_argument("--rule", required=True, choices=["epsilon", "equal"])
    _add_conn(rr, log=False)
    rr.set_defaults(func=_cmd_revenue_rule)

    ar = sub.add_parser("allowed-revenue", help="the operating body's maximum allowed revenue in a year (administrator)")
    ar.add_argument("--year", required=True)
    ar.add_argument("--amount", required=True, help="yuan")
    _add_conn(ar, log=False)
    ar.set_defaults(func=_cmd_allowed_revenue)

    au = sub.add_parser("authorize", help="record an authorization for the yearly disclosure (administrator)")
    au.add_argument("--implementing-body", required=True)
    au.add_argument("--operating-body", required=True)
    au.add_argument("--scope", required=True)
    au.add_argument("--from", dest="start", required=True, metavar="DATE")
    au.add_argument("--until", metavar="DATE")
    _add_conn(au, log=False)
    au.set_defaults(func=_cmd_authorize)

    st = sub.add_parser("statement", help="one license's statement for a month, from the log")
    st.add_argument("--license", required=True)
    st.add_argument("--period", required=True, help="a month, e.g. 2026-11 (UTC)")
    fmt = st.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    _add_conn(st, log=True)
    st.set_defaults(func=_cmd_statement)

    rv = sub.add_parser("revenue", help="revenue credited per department and dataset, from the log")
    rv.add_argument("--period", required=True, help="a month (2026-11) or a year (2026)")
    rv.add_argument("--department", help="only this department")
    rv.add_argument("--json", action="store_true")
    _add_conn(rv, log=True)
    rv.set_defaults(func=_cmd_revenue)

    report = subparsers.add_parser("report", help="public disclosure and departments' query logs (docs/billing.md)")
    rsub = report.add_subparsers(dest="report_command", metavar="SUBCOMMAND", required=True)
    dc = rsub.add_parser("disclosure", help="the yearly disclosure as JSON and one self-contained HTML page")
    dc.add_argument("--year", required=True)
    dc.add_argument("--out", default="disclosure", metavar="DIR", help="where to write disclosure-YEAR.json and .html")
    _add_conn(dc, log=True)
    dc.set_defaults(func=_cmd_disclosure)
    ql = rsub.add_parser("queries", help="a department's per-job query log for its datasets")
    ql.add_argument("--department", required=True)
    ql.add_argument("--year", required=True)
    fmt = ql.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    _add_conn(ql, log=True)
    ql.set_defaults(func=_cmd_queries)
