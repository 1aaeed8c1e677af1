"""``yumen pki init|issue``: the data space's CA and its certificates."""

from __future__ import annotations

import argparse
from pathlib import Path

from yumen.identity import Role, init_ca, issue


def _init(args: argparse.Namespace) -> int:
    path = init_ca(Path(args.dir), name=args.name)
    print(f"CA created: {path} (keep {Path(args.dir) / 'ca.key'} offline in production)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    cert, key = issue(
        Path(args.dir), role=Role(args.role), name=args.name, department=args.department or "",
        license=args.license or "", hosts=tuple(args.host or ()), days=args.days,
        out_dir=Path(args.out) if args.out else None,
    )
    print(f"issued {args.role} certificate {cert} and key {key}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pki", help="the data space CA: create it, issue certificates")
    psub = p.add_subparsers(dest="pki_command", metavar="ACTION", required=True)
    init = psub.add_parser("init", help="create the data space CA")
    init.add_argument("--dir", default="pki", help="folder for ca.crt and ca.key (default: pki)")
    init.add_argument("--name", default="Yumen Data Space CA", help="CA common name")
    init.set_defaults(func=_init)
    iss = psub.add_parser("issue", help="issue a certificate for a broker, connector, operator, auditor or admin")
    iss.add_argument("--dir", default="pki", help="the CA folder (default: pki)")
    iss.add_argument("--role", required=True, choices=[r.value for r in Role])
    iss.add_argument("--name", required=True, help="the holder's name (connector id, operator name, …)")
    iss.add_argument("--department", help="department id (connectors)")
    iss.add_argument("--license", help="license id (operators)")
    iss.add_argument("--host", action="append", help="extra DNS name or IP of a broker (repeatable)")
    iss.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    iss.add_argument("--out", help="folder for NAME.crt and NAME.key (default: the CA folder)")
    iss.set_defaults(func=_issue)
