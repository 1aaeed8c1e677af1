"""``yumen audit …``: export the log and verify it, offline or against a broker.

``yumen audit export --out DIR`` reads the log either over the AuditService (``--broker``
with mTLS files) or straight from the broker's database (``--db``, ``--log-key``,
``--origin``, on the broker host). ``yumen audit verify`` checks an export (``--from DIR``)
or a live broker (``--broker``), optionally against a state directory that remembers what
was verified before. Exit status 0 means everything verified; a failed verification exits
with the code of ``VERIFICATION_FAILED`` (see docs/cli.md) after printing where it failed.
``replay`` and ``reexecute`` are added by the broker's CLI (they need policy and connectors);
they build on :func:`yumen.audit.replay`.
"""

from __future__ import annotations

import argparse
import logging
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


def secure_channel(broker: str, ca: str | None, cert: str | None, key: str | None) -> grpc.Channel:
    """An mTLS channel to the broker (all three files are required: every channel is mutual TLS)."""
    missing = [n for n, v in (("ca", ca), ("cert", cert), ("key", key)) if not v]
    if missing:
        raise YumenError(
            Code.INVALID_ARGUMENT,
            f"--broker needs --{', --'.join(missing)}",
            hint="pass the data space CA and your auditor certificate and key",
        )
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "ca"), private_key=_read(key, "key"), certificate_chain=_read(cert, "cert")  # type: ignore[arg-type]
    )
    return grpc.secure_channel(broker, creds)


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

    if args.broker:
        from ._client import AuditClient

        with secure_channel(args.broker, args.ca, args.cert, args.key) as channel:
            cp = export(AuditClient(channel), args.out)
    else:
        log = _local_log(args)
        try:
            cp = export(log, args.out)
        finally:
            log.close()
    print(f"exported {cp.size} entries of {cp.origin} to {args.out}")
    return 0


def _vkey_text(path: str | None) -> str | None:
    if path is None:
        return None
    return _read(path, "vkey").decode("utf-8").strip()


def _cmd_verify(args: argparse.Namespace) -> int:
    vkey = _vkey_text(args.vkey)
    if args.broker and args.from_dir:
        raise YumenError(Code.INVALID_ARGUMENT, "pass either --from DIR or --broker, not both")
    if args.broker:
        from ._client import AuditClient, verify_online

        with secure_channel(args.broker, args.ca, args.cert, args.key) as channel:
            report = verify_online(
                AuditClient(channel), vkey, args.state, full=not args.light, source=f"broker {args.broker}"
            )
    else:
        from ._verify import verify_export

        if not args.from_dir:
            raise YumenError(Code.INVALID_ARGUMENT, "nothing to verify", hint="pass --from DIR (an export) or --broker HOST:PORT")
        report = verify_export(args.from_dir, vkey, args.state)
    print(report.summary())
    if not report.key_pinned:
        print("warning: the key was taken from what is being verified; pass --vkey or --state to pin it")
    return 0


def _add_tls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", metavar="HOST:PORT", help="read the log from this broker's AuditService")
    p.add_argument("--ca", metavar="FILE", help="data space CA certificate (PEM)")
    p.add_argument("--cert", metavar="FILE", help="your auditor/administrator certificate (PEM)")
    p.add_argument("--key", metavar="FILE", help="your private key (PEM)")


def register(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser("audit", help="export and verify the transparency log")
    sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)

    exp = sub.add_parser("export", help="write entries.jsonl, checkpoint and log.vkey to a directory")
    exp.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    _add_tls(exp)
    exp.add_argument("--db", metavar="PATH", help="(local) the broker's SQLite database")
    exp.add_argument("--log-key", metavar="PATH", help="(local) the log signing key (PEM)")
    exp.add_argument("--origin", metavar="NAME", help="(local) the log origin, e.g. yumen.example.gov/log")
    exp.set_defaults(func=_cmd_export)

    ver = sub.add_parser("verify", help="verify an export or a live broker; exit non-zero on any failure")
    ver.add_argument("--from", dest="from_dir", metavar="DIR", help="an export directory")
    ver.add_argument("--vkey", metavar="FILE", help="the log's published verifier key (note vkey text)")
    ver.add_argument("--state", metavar="DIR", help="remember verified checkpoints here; catches rewrites and split views")
    ver.add_argument("--light", action="store_true", help="(online) check checkpoint and proofs only, without downloading entries")
    _add_tls(ver)
    ver.set_defaults(func=_cmd_verify)
