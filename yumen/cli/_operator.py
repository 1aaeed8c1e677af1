"""Operator commands: ``yumen catalog …``, ``yumen submit …``, ``yumen job …``.

Connection settings come from flags or the environment (``YUMEN_BROKER``, ``YUMEN_CA``,
``YUMEN_CERT``, ``YUMEN_KEY``). Every command that shows a result takes ``--json`` and
then prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

from yumen.errors import Code, YumenError
from yumen.jobs import (Aggregate, Algorithm, JobRequest, OutputRange, Purpose, Query, QueryFilter, Tier, parse_epsilon,
                        parse_quantile)
from yumen.rpc import TlsFiles


def _conn_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--broker", default=os.environ.get("YUMEN_BROKER", "127.0.0.1:7443"), help="broker address (env YUMEN_BROKER)")
    g.add_argument("--ca", default=os.environ.get("YUMEN_CA"), help="data space CA certificate (env YUMEN_CA)")
    g.add_argument("--cert", default=os.environ.get("YUMEN_CERT"), help="your certificate (env YUMEN_CERT)")
    g.add_argument("--key", default=os.environ.get("YUMEN_KEY"), help="your private key (env YUMEN_KEY)")


def connection(args: argparse.Namespace) -> tuple[str, TlsFiles]:
    """The broker address and TLS files from the flags or the environment."""
    missing = [n for n in ("ca", "cert", "key") if not getattr(args, n)]
    if missing:
        raise YumenError(
            Code.CONFIG,
            f"no {', '.join('--' + m for m in missing)} given",
            hint="pass them or set YUMEN_CA, YUMEN_CERT and YUMEN_KEY",
        )
    return args.broker, TlsFiles(ca=Path(args.ca), cert=Path(args.cert), key=Path(args.key))


def client(args: argparse.Namespace) -> Any:
    from yumen.client import YumenClient

    return YumenClient(*connection(args))


def _json_safe(obj: Any) -> Any:
    """JSON has no NaN or infinities: such floats are printed as strings, never as bare
    ``-Infinity`` that JSON readers reject."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    print(json.dumps(_json_safe(obj), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False))


# -- catalog ----------------------------------------------------------------------
def _catalog_list(args: argparse.Namespace) -> int:
    with client(args) as c:
        rows = c.catalog(department=args.department or "", level=args.level or "", keyword=args.keyword or "")
    if args.json:
        _print_json({"datasets": [dict(r.to_dict(), online=on) for r, on in rows]})
        return 0
    if not rows:
        print("no datasets match")
        return 0
    print(f"{'DATASET':<22} {'LEVEL':<5} {'DEPARTMENT':<20} {'ONLINE':<6} TITLE")
    for reg, online in rows:
        print(f"{reg.id:<22} {reg.level.value:<5} {reg.department:<20} {'yes' if online else 'no':<6} {reg.title}")
    return 0


def _catalog_show(args: argparse.Namespace) -> int:
    with client(args) as c:
        reg, online = c.dataset(args.dataset)
        steward = c.stewardship(args.dataset)
    if args.json:
        _print_json(dict(reg.to_dict(), online=online, quality=steward["quality"], quality_digest=steward["quality_digest"],
                         feedback_count=steward["feedback_count"], verification=steward["verification"]))
        return 0
    print(f"{reg.id}: {reg.title}")
    if reg.description:
        print(f"  {reg.description}")
    print(f"  department {reg.department}, level {reg.level.value}, {'online' if online else 'offline'}")
    print(f"  version {reg.version}")
    pu = reg.privacy_unit
    print(f"  privacy unit: {pu.column or 'each row'} (at most {pu.max_contributions} rows each)")
    print("  columns:")
    for col in reg.columns:
        extra = ""
        if col.numeric:
            extra = f" in [{col.lower:g}, {col.upper:g}]"
        elif col.categories:
            extra = f" one of {', '.join(col.categories)}"
        unit = f" ({col.unit})" if col.unit else ""
        public = " [public]" if col.public else ""
        print(f"    {col.name:<20} {col.type.value:<8}{unit}{extra}{public}")
    _print_quality(steward)
    v = steward["verification"]
    if v:
        print(f"  verification: {', '.join(v['fields'])} by {v['subject']} for {', '.join(v['purposes'])}; "
              f"{v['per_license_per_day']} a day per license, {v['per_subject_per_day']} a day per person"
              + ("; says which fields mismatch" if v["reveal_mismatches"] else ""))
    return 0


def _share(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _print_quality(steward: dict[str, Any]) -> None:
    print(f"  quality feedback from operators: {steward['feedback_count']}")
    q = steward["quality"]
    if not q:
        print("  quality report: none yet for this version")
        return
    verdict = "passes the department's thresholds" if q["passed"] else "fails: " + "; ".join(q["failures"])
    loss = q.get("loss", {})
    spent = loss.get("epsilon") or loss.get("rho") or "0"
    print(f"  quality report {steward['quality_digest']}")
    print(f"    {verdict}; released with {loss.get('accounting', 'pure')} noise ({'ε' if 'epsilon' in loss else 'ρ'} "
          f"{_fraction_text(spent)}); schema {'conforms' if q['schema']['conforms'] else 'does not conform'}")
    t = q["table"]
    rows = "n/a" if t.get("rows") is None else f"{t['rows']:.0f}"
    print(f"    rows ≈ {rows}, without a privacy-unit id {_share(t.get('without_unit'))}, "
          f"duplicates {_share(t.get('duplicates'))}")
    f = q.get("freshness", {})
    if f.get("days_since_previous") is not None:
        print(f"    {f['days_since_previous']} days after the previous version"
              + (" (late for " + f["update_frequency"] + ")" if f.get("late") else ""))
    for name, col in q["columns"].items():
        parts = [f"null {_share(col.get('null_rate'))}"]
        if "out_of_bounds" in col:
            parts.append(f"out of bounds {_share(col.get('out_of_bounds'))}")
        if "undeclared" in col:
            parts.append(f"undeclared {_share(col.get('undeclared'))}")
        if col.get("psi") is not None:
            parts.append(f"PSI {col['psi']:.3f}")
        print(f"    {name:<20} " + ", ".join(parts) + (" (exact: public)" if col.get("public") else ""))


def _fraction_text(text: str) -> str:
    try:
        return f"{float(Fraction(text)):.4g}"
    except (ValueError, ZeroDivisionError):
        return text


def _catalog_feedback(args: argparse.Namespace) -> int:
    with client(args) as c:
        ack = c.feedback(args.dataset, args.message, category=args.category, version=args.version or "")
    if args.json:
        _print_json(dict(ack, dataset=args.dataset))
        return 0
    where = "delivered to the department" if ack["delivered"] else "the department gets it when its connector reconnects"
    print(f"feedback {ack['id']} on {args.dataset} recorded ({where}); {ack['count']} so far on this dataset")
    return 0


# -- verification ------------------------------------------------------------------------
VERIFY_NO = 16  # exit code of `yumen verify` when the department answers no (docs/cli.md)


def _parse_claim(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise YumenError(Code.INVALID_ARGUMENT, f"claim {text!r} is not FIELD=VALUE", hint="e.g. --claim region=north")
    return key, value


def _verify(args: argparse.Namespace) -> int:
    claims = dict(_parse_claim(c) for c in args.claim or [])
    if len(claims) != len(args.claim or []):
        raise YumenError(Code.INVALID_ARGUMENT, "a field is claimed twice", hint="give each --claim FIELD once")
    with client(args) as c:
        answer = c.verify(args.dataset, subject=args.subject, claims=claims, purpose=args.purpose, which=args.which,
                          request_id=args.request_id or "")
    if args.json:
        _print_json(answer)
    elif answer["answer"] == "refused":
        print(f"refused: {answer['message']} (logged as entry {answer['log_index']})", file=sys.stderr)
    else:
        tail = f"; mismatched: {', '.join(answer['mismatched'])}" if answer["mismatched"] else ""
        print(f"{answer['answer']}{tail} (request {answer['request_id']}, logged as entry {answer['log_index']})")
    if answer["answer"] == "refused":
        return 4
    return 0 if answer["answer"] == "yes" else VERIFY_NO


# -- submit -------------------------------------------------------------------------
def _job_id(args: argparse.Namespace) -> str:
    from yumen.jobs import new_job_id

    return args.job_id or new_job_id()


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise YumenError(Code.INVALID_ARGUMENT, f"parameter {text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _parse_output(text: str) -> OutputRange:
    name, sep, rng = text.partition("=")
    lo, sep2, hi = rng.partition(":")
    if not (sep and sep2):
        raise YumenError(Code.INVALID_ARGUMENT, f"output {text!r} is not NAME=LOWER:UPPER", hint="e.g. --output mean_temp=-40:50")
    try:
        return OutputRange(name=name, lower=float(lo), upper=float(hi))
    except ValueError:
        raise YumenError(Code.INVALID_ARGUMENT, f"output {text!r}: bounds must be numbers") from None


def _run(args: argparse.Namespace, request: JobRequest, secret_context: bytes = b"") -> int:
    with client(args) as c:
        info = c.submit(request)
        if not args.json:
            print(f"job {info.job_id} accepted under rule {info.matched_rule} "
                  f"(policy {info.policy_version[:19]}…); ε {info.epsilon} reserved"
                  + (f"; {info.price_held} yuan held" if info.price_held else ""), file=sys.stderr)
        if args.no_wait:
            if args.json:
                _print_json({"job": info.to_dict()})
            return 0
        for ev in c.watch(info.job_id, timeout=args.wait):
            if not args.json:
                print(f"  {ev.state:<10} {ev.message}", file=sys.stderr)
        info = c.job(info.job_id)
        if info.state != "succeeded":
            if args.json:
                _print_json({"job": info.to_dict(), "result": None})
            else:
                print(f"job {info.job_id} {info.state}: {info.message}", file=sys.stderr)
            code = Code.DEPARTMENT_REFUSED if info.state == "refused" else Code.JOB_FAILED
            from yumen.errors import exit_code

            return exit_code(code)
        is_mean = request.query is not None and request.query.aggregate is Aggregate.MEAN
        result = c.result(info.job_id, mean=is_mean)
        if result.encrypted:
            if not secret_context:
                raise YumenError(Code.INVALID_ARGUMENT, "the result is encrypted and no secret context is at hand")
            result = result.decrypt(secret_context)
    if args.json:
        _print_json({"job": info.to_dict(), "result": _result_json(result)})
    else:
        _print_result(result)
    return 0


def _in_ranks(value: dict[str, Any]) -> bool:
    """A quantile's accuracy (ci95, noise scale) is in rows of rank, not in value units."""
    return value.get("name") == "quantile"


def _result_json(result: Any) -> dict[str, Any]:
    """The result as JSON; each value says the unit of its ``ci95`` ("rank" for quantiles)."""
    d = result.to_dict()
    d["values"] = [dict(v, ci95_unit="rank" if _in_ranks(v) else "value") for v in d.get("values", [])]
    return d


def _print_result(result: Any) -> None:
    loss = result.loss or {}
    spent = (f"ρ {float(Fraction(loss['rho'])):.6g} at δ {float(Fraction(loss['delta'])):.0e}, ≈ ε {result.epsilon_spent}"
             if loss.get("rho") else f"ε spent {result.epsilon_spent}")
    print(f"result of {result.job_id} ({result.mechanism}, {spent}"
          f"{', bill ' + result.bill.get('amount', '0') + ' ' + result.bill.get('currency', '') if result.bill else ''}):")
    for v in result.values:
        label = f"{v['name']}[{v['group']}]" if v["group"] else v["name"]
        if v["name"] == "_failed_share":
            label = "share of blocks that failed"
        if _in_ranks(v):
            # The exponential mechanism picks a value whose rank is off by at most this many
            # rows (95%); how far that is in the column's units depends on the data, so it is
            # not shown as a value interval.
            print(f"  {label:<32} {v['value']:>14.3f}   ± {math.ceil(v['ci95']):,} ranks (95%: the released value's "
                  f"rank among the rows is within this many of the quantile's; not a ± in value units)")
            continue
        print(f"  {label:<32} {v['value']:>14.3f}   ±{v['ci95']:.3f} (95%, noise scale {v['noise_scale']:.3g})")
    if result.suppressed_groups:
        print(f"  suppressed (below the minimum group size): {', '.join(result.suppressed_groups)}")
    for p in result.provenance:
        print(f"  from {p['dataset']} of {p['department']}, version {p['dataset_version'][:19]}…")
    print(f"  result digest {result.result_digest}, log entry {result.log_index}")


def _he_keys(args: argparse.Namespace) -> tuple[bytes, bytes]:
    """A fresh CKKS key pair for this job; the secret stays on this machine (saved if asked)."""
    if not args.he:
        return b"", b""
    from yumen.privacy import he_keygen

    secret, public = he_keygen()
    if args.he_secret_out:
        import os as _os

        fd = _os.open(args.he_secret_out, _os.O_WRONLY | _os.O_CREAT | _os.O_TRUNC, 0o600)
        with _os.fdopen(fd, "wb") as f:
            f.write(secret)
    return secret, public


def _query(args: argparse.Namespace) -> Query:
    return Query(
        aggregate=Aggregate(args.aggregate), column=args.column or "", group_by=args.group_by or "",
        filters=tuple(QueryFilter.parse(f) for f in args.filter or ()), bins=args.bins or 0,
        quantile=parse_quantile(args.quantile) if args.quantile else None,
    )


def _query_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aggregate", required=True, choices=[a.value for a in Aggregate])
    p.add_argument("--column", help="the column to aggregate (all but count)")
    p.add_argument("--group-by", help="a declared category column")
    p.add_argument("--filter", action="append",
                   help='keep rows where COLUMN OP VALUE, e.g. "cost_yuan >= 100" or "age_band in 65-74,75+" (repeatable)')
    p.add_argument("--bins", type=int, help="histogram of a numeric column: number of equal-width bins")
    p.add_argument("--quantile", help="quantile query: which quantile, e.g. 0.5 for the median")


def _submit_query(args: argparse.Namespace) -> int:
    secret, public = _he_keys(args)
    request = JobRequest(
        job_id=_job_id(args), datasets=tuple(args.dataset), tier=Tier.QUERY, purpose=Purpose(args.purpose),
        epsilon=parse_epsilon(args.epsilon),
        query=_query(args), he_context=public,
    )
    return _run(args, request, secret)


def _submit_algorithm(args: argparse.Namespace) -> int:
    path = Path(args.algorithm)
    try:
        source = path.read_bytes()
    except OSError as e:
        raise YumenError(Code.INVALID_ARGUMENT, f"cannot read algorithm {path}: {e.strerror}") from None
    request = JobRequest(
        job_id=_job_id(args), datasets=tuple(args.dataset), tier=Tier(args.tier), purpose=Purpose(args.purpose),
        epsilon=parse_epsilon(args.epsilon),
        algorithm=Algorithm(
            source=source, outputs=tuple(_parse_output(o) for o in args.output or ()),
            params=dict(_parse_param(p) for p in args.param or ()), timeout_s=args.timeout, memory_mb=args.memory,
            blocks=args.blocks,
        ),
    )
    return _run(args, request)


# -- explain ------------------------------------------------------------------------
def _explain(args: argparse.Namespace) -> int:
    tier = Tier(args.tier)
    query = algorithm = None
    if tier is Tier.QUERY:
        query = _query(args)
    else:
        if not args.algorithm:
            raise YumenError(Code.INVALID_ARGUMENT, f"a {tier.value} explanation needs --algorithm FILE")
        algorithm = Algorithm(source=Path(args.algorithm).read_bytes(),
                              outputs=tuple(_parse_output(o) for o in args.output or ()))
    request = JobRequest(job_id="explain", datasets=tuple(args.dataset), tier=tier, purpose=Purpose(args.purpose),
                         epsilon=parse_epsilon(args.epsilon), query=query, algorithm=algorithm)
    with client(args) as c:
        e = c.explain(request)
    if args.json:
        _print_json(e)
        return 0
    if e["allowed"]:
        print(f"allowed under rule {e['matched_rule']} (policy {e['policy_version'][:19]}…)")
    else:
        print(f"denied ({e['gate']}): {e['reason']}")
    if e["obligations"]:
        print("  obligations: " + ", ".join(f"{k}={v}" for k, v in sorted(e["obligations"].items()) if v))
    if e["period"]:
        print(f"  ε {e['epsilon_requested']} requested; {e['epsilon_remaining']} left in period {e['period']}, "
              f"{e['epsilon_remaining_after']} after this job; {e['runs_remaining']} runs left")
    if e["accounts"]:
        print(f"  privacy accounting: {e['accounting']}" + (f" (δ {float(Fraction(e['delta'])):.0e})" if e["delta"] else "")
              + f"; this job costs {e['cost']} on each account:")
        for a in e["accounts"]:
            print(f"    {a['kind']:<9} {a['window']:<10} cap {a['cap']}: {a['remaining']} left, {a['remaining_after']} after")
    print(f"  price: {e['price']} yuan" + (f" ({e['product']}: " + "; ".join(
        f"{x['unit']} {x['quantity']} × {x['unit_price']} (cap {x['cap']}) = {x['amount']}" for x in e["quote"]["lines"]) + ")"
        if e.get("quote", {}).get("lines") else ""))
    return 0


# -- job ------------------------------------------------------------------------------
def _job_status(args: argparse.Namespace) -> int:
    with client(args) as c:
        info = c.job(args.job_id)
    if args.json:
        _print_json({"job": info.to_dict()})
    else:
        print(f"{info.job_id}: {info.state} — {info.message}")
    return 0


def _job_watch(args: argparse.Namespace) -> int:
    with client(args) as c:
        events = [dict(state=e.state, message=e.message, at_ms=e.at_ms) for e in c.watch(args.job_id)]
        for e in events if not args.json else ():
            print(f"{e['state']:<10} {e['message']}")
    if args.json:
        _print_json({"job_id": args.job_id, "events": events})
    return 0


def _job_result(args: argparse.Namespace) -> int:
    with client(args) as c:
        result = c.result(args.job_id)
    if args.json:
        _print_json({"result": _result_json(result)})
    else:
        _print_result(result)
    return 0


def _job_cancel(args: argparse.Namespace) -> int:
    with client(args) as c:
        info = c.cancel(args.job_id)
    if args.json:
        _print_json({"job": info.to_dict()})
    else:
        print(f"{info.job_id}: {info.state} — {info.message}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    cat = sub.add_parser("catalog", help="browse the catalog of public data resources (metadata only)")
    csub = cat.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)
    ls = csub.add_parser("list", help="list datasets")
    ls.add_argument("--department")
    ls.add_argument("--level", choices=["L1", "L2", "L3", "L4"])
    ls.add_argument("--keyword")
    ls.add_argument("--json", action="store_true")
    _conn_args(ls)
    ls.set_defaults(func=_catalog_list)
    show = csub.add_parser("show", help="show one dataset's registration")
    show.add_argument("dataset")
    show.add_argument("--json", action="store_true")
    _conn_args(show)
    show.set_defaults(func=_catalog_show)
    fb = csub.add_parser("feedback", help="flag a quality problem on a dataset (the department receives it)")
    fb.add_argument("dataset")
    fb.add_argument("--message", required=True, help="what you saw, e.g. \"region is null in most rows since 2026-11\"")
    fb.add_argument("--category", default="other",
                    choices=["nulls", "bounds", "categories", "duplicates", "freshness", "drift", "schema", "other"])
    fb.add_argument("--version", help="the version you saw it on (default: the current one)")
    fb.add_argument("--json", action="store_true")
    _conn_args(fb)
    fb.set_defaults(func=_catalog_feedback)

    v = sub.add_parser("verify", help="does a record you hold match the department's data? yes or no (docs/verification.md)")
    v.add_argument("--dataset", required=True)
    v.add_argument("--subject", required=True, help="the subject's identifier (sealed to the department; the broker never sees it)")
    v.add_argument("--claim", action="append", required=True, help="FIELD=VALUE you hold (repeatable)")
    v.add_argument("--purpose", required=True, choices=[x.value for x in Purpose])
    v.add_argument("--which", action="store_true", help="ask which fields mismatch (when the department allows it)")
    v.add_argument("--request-id", help="idempotency key (default: generated); a retry gets the same answer, counted once")
    v.add_argument("--json", action="store_true")
    _conn_args(v)
    v.set_defaults(func=_verify)

    s = sub.add_parser("submit", help="submit a job and print its released result")
    ssub = s.add_subparsers(dest="submit_command", metavar="TIER", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", action="append", required=True, help="dataset id")
        p.add_argument("--epsilon", required=True, help="privacy budget for this job, e.g. 0.5")
        p.add_argument("--purpose", required=True, choices=[x.value for x in Purpose])
        p.add_argument("--job-id", help="idempotency key (default: generated)")
        p.add_argument("--no-wait", action="store_true", help="return once the job is accepted")
        p.add_argument("--wait", type=float, default=600, help="seconds to wait for the result (default 600)")
        p.add_argument("--json", action="store_true")
        _conn_args(p)

    q = ssub.add_parser("query", help="a declarative DP aggregate")
    _query_args(q)
    q.add_argument("--he", action="store_true",
                   help="homomorphic delivery: results come back encrypted under a key made here; the broker cannot read them")
    q.add_argument("--he-secret-out", help="also save the secret CKKS context to this file (mode 0600)")
    common(q)
    q.set_defaults(func=_submit_query)
    a = ssub.add_parser("algorithm", help="a Python algorithm run in a sandbox next to the data")
    a.add_argument("algorithm", help="the algorithm file (writes /data/output/result.json)")
    a.add_argument("--output", action="append", help="declared output and its range, NAME=LOWER:UPPER (repeatable)")
    a.add_argument("--param", action="append", help="parameter KEY=VALUE, VALUE parsed as JSON when it can be")
    a.add_argument("--tier", default=Tier.CUSTOM_ALGORITHM.value, choices=[Tier.APPROVED_ALGORITHM.value, Tier.CUSTOM_ALGORITHM.value])
    a.add_argument("--timeout", type=float, default=30.0,
                   help="the job's time limit in seconds (default 30); the result is released this long, plus the "
                        "department's fixed allowance, after the job starts, however early the code finishes")
    a.add_argument("--memory", type=int, default=512, help="memory limit in MB")
    a.add_argument("--blocks", type=int, default=10,
                   help="custom tier: sample-and-aggregate blocks, 2–100 (more blocks, less noise, less data each; "
                        "the time limit is shared out over the waves of blocks the department runs at once)")
    common(a)
    a.set_defaults(func=_submit_algorithm)

    pe = sub.add_parser("policy", help="ask what policy would decide, without spending budget")
    pesub = pe.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    ex = pesub.add_parser("explain", help="would this job be allowed, under which rule, at what ε and price?")
    ex.add_argument("--dataset", action="append", required=True)
    ex.add_argument("--tier", default=Tier.QUERY.value, choices=[t.value for t in Tier])
    ex.add_argument("--purpose", required=True, choices=[x.value for x in Purpose])
    ex.add_argument("--epsilon", required=True)
    ex.add_argument("--aggregate", default=Aggregate.COUNT.value, choices=[a.value for a in Aggregate])
    ex.add_argument("--column")
    ex.add_argument("--group-by")
    ex.add_argument("--filter", action="append")
    ex.add_argument("--bins", type=int)
    ex.add_argument("--quantile")
    ex.add_argument("--algorithm", help="the algorithm file (algorithm tiers)")
    ex.add_argument("--output", action="append", help="NAME=LOWER:UPPER (algorithm tiers)")
    ex.add_argument("--json", action="store_true")
    _conn_args(ex)
    ex.set_defaults(func=_explain)

    j = sub.add_parser("job", help="follow a submitted job")
    jsub = j.add_subparsers(dest="job_command", metavar="ACTION", required=True)
    for name, fn, helptext in (("status", _job_status, "show a job's state"),
                               ("watch", _job_watch, "stream a job's progress until it ends"),
                               ("result", _job_result, "fetch a job's released result"),
                               ("cancel", _job_cancel, "cancel your queued or running job; nothing of it is released "
                                                       "(budget: returned if no department started it)")):
        jp = jsub.add_parser(name, help=helptext)
        jp.add_argument("job_id")
        jp.add_argument("--json", action="store_true")
        _conn_args(jp)
        jp.set_defaults(func=fn)
