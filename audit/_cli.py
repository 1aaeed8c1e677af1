"""``yumen audit …``: export the log and verify it, offline or against a broker.

``yumen audit keygen`` creates the log signing key and prints the verifier key to publish.
``yumen audit export --out DIR`` reads the log straight from the broker's database when
given ``--db``, ``--log-key`` and ``--origin`` (on the broker host), and otherwise over the
AuditService. ``yumen audit verify`` checks an export (``--from DIR``) or, without
``--from``, the live broker; either optionally against a state directory that remembers
what was verified before. Connection settings come from flags or the environment
(``YUMEN_BROKER``, ``YUMEN_CA``, ``YUMEN_CERT``, ``YUMEN_KEY``), as for every client command. Exit status 0 means everything verified; a failed verification exits
with the code of ``VERIFICATION_FAILED`` (see docs/cli.md) after printing where it failed.
``replay`` and ``reexecute`` are added by the broker's CLI (they need policy and connectors);
they build on :func:`yumen.audit.replay`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any
from pathlib import Path

import grpc

from yumen.errors import Code, YumenError

__all__ = ["register", "secure_channel"]

_log = logging.getLogger(__name__)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise YumenError(Code.CONFIG, f"cannot read {what} {path}: {e.strerror}", hint=f"check --{what}") from None


def _connection(args: argparse.Namespace) -> tuple[str, Any]:
    """``--broker`` and the TLS files (every channel is mutual TLS; all three files are needed)."""
    from yumen.rpc import TlsFiles

    missing = [n for n in ("ca", "cert", "key") if not getattr(args, n)]
    if missing:
        raise YumenError(
            Code.CONFIG,
            f"no {', '.join('--' + m for m in missing)} given for the broker {args.broker}",
            hint="pass them or set YUMEN_CA, YUMEN_CERT and YUMEN_KEY (an auditor or administrator certificate)",
        )
    return args.broker, TlsFiles(ca=Path(args.ca), cert=Path(args.cert), key=Path(args.key))


def secure_channel(args: argparse.Namespace) -> grpc.Channel:
    """The mTLS channel to ``--broker``."""
    from yumen.rpc import secure_channel as _channel

    return _channel(*_connection(args))


def _local_log(args: argparse.Namespace):
    from ._log import TransparencyLog
    from ._note import load_log_key
    from ._storage import SQLiteLogStorage

    missing = [n for n in ("db", "log_key", "origin") if not getattr(args, n)]
    if missing:
        raise YumenError(
            Code.INVALID_ARGUMENT,
            "a local export needs --db, --log-key and --origin",
            hint="or reach the log over the network with --broker, --ca, --cert, --key",
        )
    if not Path(args.db).is_file():
        raise YumenError(Code.CONFIG, f"log database {args.db} does not exist", hint="point --db at the broker's database")
    return TransparencyLog(SQLiteLogStorage(args.db), origin=args.origin, signing_key=load_log_key(args.log_key))


def _cmd_export(args: argparse.Namespace) -> int:
    from ._verify import export

    if args.db or args.log_key or args.origin:
        log = _local_log(args)
        try:
            cp = export(log, args.out)
        finally:
            log.close()
    else:
        from ._client import AuditClient

        with secure_channel(args) as channel:
            cp = export(AuditClient(channel), args.out)
    _emit(args, {"exported": cp.size, "origin": cp.origin, "out": str(args.out)},
          f"exported {cp.size} entries of {cp.origin} to {args.out}")
    return 0


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    """Print ``text``, or with ``--json`` one JSON object on stdout."""
    if getattr(args, "json", False):
        import json

        print(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str))
    else:
        print(text)


def _report_json(report: Any) -> dict[str, Any]:
    import base64

    return {"source": report.source, "origin": report.origin, "size": report.size,
            "root": base64.b64encode(report.root).decode(), "key": report.key, "key_pinned": report.key_pinned,
            "entries_checked": report.entries_checked, "entry_types": dict(report.entry_types),
            "previous_size": report.previous_size, "consistency": report.consistency}


def _vkey_text(path: str | None) -> str | None:
    if path is None:
        return None
    return _read(path, "vkey").decode("utf-8").strip()


def _ca_pem(args: argparse.Namespace) -> bytes | None:
    """The data space CA (``--ca``/``YUMEN_CA``): logged connector certificates must be issued by it."""
    return _read(args.ca, "CA certificate") if getattr(args, "ca", None) else None


def _cmd_verify(args: argparse.Namespace) -> int:
    vkey = _vkey_text(args.vkey)
    if args.from_dir:
        from ._verify import verify_export

        report = verify_export(args.from_dir, vkey, args.state, ca_pem=_ca_pem(args))
    else:
        from ._client import AuditClient, verify_online

        with secure_channel(args) as channel:
            report = verify_online(
                AuditClient(channel), vkey, args.state, full=not args.light, source=f"broker {args.broker}",
                ca_pem=_ca_pem(args),
            )
    _emit(args, {"verified": _report_json(report)}, report.summary())
    if not report.key_pinned:
        print("warning: the key was taken from what is being verified; pass --vkey or --state to pin it",
              file=sys.stderr if getattr(args, "json", False) else sys.stdout)
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    """Verify an export, replay it (re-deciding every decision), and compare the books."""
    from yumen.errors import Code, YumenError

    from ._billing import BillingBook, compare_statements, logged_statements
    from ._reconcile import Bills, Ledger, compare_accounts, entries_from_export, reevaluate
    from ._replay import replay
    from ._verify import verify_export

    report = verify_export(args.from_dir, _vkey_text(args.vkey), args.state, ca_pem=_ca_pem(args))
    as_json = getattr(args, "json", False)
    if not as_json:
        print(report.summary())
    ledger, bills, book = Ledger(), Bills(), BillingBook()
    entries = entries_from_export(args.from_dir)
    result = replay(
        entries,
        reevaluate=lambda entry, ctx: reevaluate(entry, ctx, ledger),
        accumulators={"ledger": ledger, "bills": bills, "billing": book},
    )
    # every charge recomputed from the catalogue and the signed metering, against the broker's statements
    charge_differences = book.differences + compare_statements(logged_statements(entries), book.statements)
    jobs = sum(len(v) for v in book.statements.values())
    out: dict[str, Any] = {
        "verified": _report_json(report), "entries": result.entries, "decisions_reevaluated": result.decisions_reevaluated,
        "ledger": [{"license": lic, "dataset": ds, "period": period, "spent": f"{eps.numerator}/{eps.denominator}",
                    "runs": runs} for (lic, ds, period), (eps, runs) in sorted(ledger.result().items())],
        "bills": [{"operator": op, "currency": cur, "amount": str(amount), "jobs": n}
                  for (op, cur), (amount, n) in sorted(bills.result().items())],
        "statements": {"count": len(book.statements), "jobs": jobs, "catalogue_changes": len(book.catalogue.history)},
        "compared_with_broker": False, "differences": charge_differences,
    }
    if not as_json:
        print(f"replayed {result.entries} entries; {result.decisions_reevaluated} decisions re-evaluated "
              "under the policy versions they name, all reached the same result")
        for d in charge_differences:
            print(f"difference: {d}")
    if charge_differences:
        raise YumenError(Code.VERIFICATION_FAILED, f"{len(charge_differences)} differences between the logged charges "
                                                   "and those rebuilt from the catalogue and the metering")
    if not as_json:
        print(f"{len(book.statements)} statements ({jobs} jobs) rebuilt from the log match the broker's to the fen; "
              f"{len(book.catalogue.history)} catalogue changes re-validated")
    if not (args.ca and args.cert and args.key):
        if as_json:
            _emit(args, out, "")
            return 0
        print("books rebuilt from the log (pass --ca/--cert/--key to compare them with the broker's):")
        for (lic, ds, period), (eps, runs) in sorted(ledger.result().items()):
            print(f"  ε {eps} in {runs} runs: license {lic}, dataset {ds}, period {period}")
        for (op, cur), (amount, n) in sorted(bills.result().items()):
            print(f"  billed {amount} {cur} for {n} jobs: {op}")
        return 0
    from yumen.client import AdminClient

    with AdminClient(*_connection(args)) as admin:
        accounts = admin.accounts()
    differences = compare_accounts(ledger.result(), bills.result(), accounts)
    out.update(compared_with_broker=True, differences=differences)
    if as_json and not differences:
        _emit(args, out, "")
    for d in differences if not as_json else ():
        print(f"difference: {d}")
    if differences:
        raise YumenError(Code.VERIFICATION_FAILED, f"{len(differences)} differences between the log and the broker's books: "
                         + "; ".join(differences[:3]) + ("; …" if len(differences) > 3 else ""))
    if not as_json:
        print(f"the broker's ledger ({len(ledger.result())} rows) and bills ({len(bills.result())} operators) match the log")
    return 0


def _cmd_reexecute(args: argparse.Namespace) -> int:
    """Ask the departments of a logged job (with their consent) to run it again and check it."""
    import json as _json

    from yumen.client import AdminClient

    with AdminClient(*_connection(args)) as admin:
        results = admin.reexecute(args.job)
    if args.json:
        print(_json.dumps({"job_id": args.job, "datasets": results}, indent=2))
    for r in results if not args.json else ():
        if r["error"]:
            print(f"{r['dataset']} ({r['department']}): not re-executed: {r['error']}")
        else:
            verdict = "matches" if r["matches"] else "DOES NOT MATCH"
            print(f"{r['dataset']} ({r['department']}), version {r['dataset_version'][:19]}…: "
                  f"recomputed commitment {verdict} the logged one")
    bad = [r for r in results if r["error"] or not r["matches"]]
    if bad:
        raise YumenError(Code.VERIFICATION_FAILED, f"{len(bad)} of {len(results)} datasets did not re-execute to the logged commitment")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from ._note import NoteSigner, generate_log_key, save_log_key

    key = generate_log_key()
    vkey = NoteSigner(args.origin, key).verifier.vkey  # validates the name before writing anything
    save_log_key(key, args.out)
    if args.vkey_out:
        Path(args.vkey_out).write_text(vkey + "\n", encoding="utf-8")
    _emit(args, {"vkey": vkey, "key": str(args.out), "vkey_file": args.vkey_out or ""}, vkey)
    return 0


def _add_tls(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker connection (mTLS)")
    g.add_argument("--broker", default=os.environ.get("YUMEN_BROKER", "127.0.0.1:7443"), metavar="HOST:PORT",
                   help="the broker's address (env YUMEN_BROKER)")
    g.add_argument("--ca", default=os.environ.get("YUMEN_CA"), metavar="FILE", help="data space CA certificate (env YUMEN_CA)")
    g.add_argument("--cert", default=os.environ.get("YUMEN_CERT"), metavar="FILE",
                   help="your auditor or administrator certificate (env YUMEN_CERT)")
    g.add_argument("--key", default=os.environ.get("YUMEN_KEY"), metavar="FILE", help="your private key (env YUMEN_KEY)")


def register(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser("audit", help="export and verify the transparency log")
    sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)

    gen = sub.add_parser("keygen", help="create the log signing key (PEM, 0600) and print its verifier key")
    gen.add_argument("--out", required=True, metavar="PATH", help="where to write the private key (never overwritten)")
    gen.add_argument("--origin", required=True, metavar="NAME", help="the log origin, e.g. yumen.example.gov/log")
    gen.add_argument("--vkey-out", metavar="PATH", help="also write the verifier key here (publish it)")
    gen.add_argument("--json", action="store_true", help="print one JSON object on stdout (errors too)")
    gen.set_defaults(func=_cmd_keygen)

    exp = sub.add_parser("export", help="write entries.jsonl, checkpoint and log.vkey to a directory")
    exp.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    _add_tls(exp)
    exp.add_argument("--db", metavar="PATH", help="(local) the broker's SQLite database")
    exp.add_argument("--log-key", metavar="PATH", help="(local) the log signing key (PEM)")
    exp.add_argument("--origin", metavar="NAME", help="(local) the log origin, e.g. yumen.example.gov/log")
    exp.add_argument("--json", action="store_true", help="print one JSON object on stdout (errors too)")
    exp.set_defaults(func=_cmd_export)

    ver = sub.add_parser("verify", help="verify an export or a live broker; exit non-zero on any failure")
    ver.add_argument("--from", dest="from_dir", metavar="DIR", help="an export directory")
    ver.add_argument("--vkey", metavar="FILE", help="the log's published verifier key (note vkey text)")
    ver.add_argument("--state", metavar="DIR", help="remember verified checkpoints here; catches rewrites and split views")
    ver.add_argument("--light", action="store_true", help="(online) check checkpoint and proofs only, without downloading entries")
    _add_tls(ver)
    ver.add_argument("--json", action="store_true", help="print one JSON object on stdout (errors too)")
    ver.set_defaults(func=_cmd_verify)

    rep = sub.add_parser("replay", help="re-decide every logged decision and rebuild the ledger and bills from an export")
    rep.add_argument("--from", dest="from_dir", required=True, metavar="DIR", help="an export directory (yumen audit export)")
    rep.add_argument("--vkey", metavar="FILE", help="the log's published verifier key")
    rep.add_argument("--state", metavar="DIR", help="remembered checkpoints, as for verify")
    _add_tls(rep)
    rep.add_argument("--json", action="store_true", help="print one JSON object on stdout (errors too)")
    rep.set_defaults(func=_cmd_replay)

    rex = sub.add_parser("reexecute", help="have the departments re-run a logged job on the same data version")
    rex.add_argument("--job", required=True, help="the job id")
    rex.add_argument("--json", action="store_true")
    _add_tls(rex)
    rex.set_defaults(func=_cmd_reexecute)
