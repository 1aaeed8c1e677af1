"""Data authority commands: ``yumen admin license …`` and ``yumen admin policy …``."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from yumen.catalog import Level
from yumen.jobs import Purpose
from yumen.policy import License, PolicyBundle, default_policy_paths, parse_time

from yumen.cli._operator import _conn_args, _print_json, connection
from yumen.client import AdminClient


def _admin(args: argparse.Namespace) -> AdminClient:
    return AdminClient(*connection(args))


def _show_license(lic: License, as_json: bool) -> None:
    if as_json:
        _print_json(lic.to_dict())
        return
    d = lic.to_dict()
    print(f"{d['id']}: {d['organization']} ({d['status']}), group {d['group']}")
    print(f"  valid {d['valid_from']} – {d['valid_until']}")
    print(f"  purposes {', '.join(d['purposes'])}; levels {', '.join(d['levels'])}")


def _issue(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.timezone.utc)
    lic = License(
        id=args.id, organization=args.organization, group=args.group,
        purposes=frozenset(Purpose(p) for p in (args.purpose or [p.value for p in Purpose])),
        levels=frozenset(Level(lv) for lv in (args.level or ["L1", "L2"])),
        valid_from=parse_time(args.valid_from) if args.valid_from else now,
        valid_until=parse_time(args.until) if args.until else now + dt.timedelta(days=365),
    )
    with _admin(args) as c:
        _show_license(c.issue_license(lic), args.json)
    return 0


def _change(args: argparse.Namespace) -> int:
    with _admin(args) as c:
        lic = c.change_license(args.id, args.action, valid_until=getattr(args, "until", "") or "", reason=args.reason or "")
    _show_license(lic, args.json)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _admin(args) as c:
        lics = c.licenses()
    if args.json:
        _print_json({"licenses": [x.to_dict() for x in lics]})
    else:
        for lic in lics:
            d = lic.to_dict()
            print(f"{d['id']:<20} {d['status']:<10} until {d['valid_until']}  {d['organization']}")
    return 0


def _policy_show(args: argparse.Namespace) -> int:
    with _admin(args) as c:
        version, bundle = c.policy(args.version or "")
    if args.json:
        _print_json({"version": version, **bundle.to_dict()})
    else:
        print(f"# policy version {version}\n")
        print(bundle.rules)
        print(bundle.settings)
    return 0


def _policy_set(args: argparse.Namespace) -> int:
    model_default, rules_default, settings_default = default_policy_paths()
    bundle = PolicyBundle.from_files(
        Path(args.model) if args.model else model_default,
        Path(args.rules) if args.rules else rules_default,
        Path(args.settings) if args.settings else settings_default,
    )
    with _admin(args) as c:
        version = c.set_policy(bundle, replaces=args.replaces or "")
    if args.json:
        _print_json({"version": version})
    else:
        print(f"policy version {version} is in force")
    return 0


def _cert_revoke(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from yumen.errors import Code, YumenError

    if bool(args.cert_file) == bool(args.fingerprint):
        raise YumenError(Code.INVALID_ARGUMENT, "name the certificate with exactly one of --certificate FILE and --fingerprint HEX")
    name = args.name or ""
    fingerprint = (args.fingerprint or "").lower()
    if args.cert_file:
        try:
            cert = x509.load_pem_x509_certificate(Path(args.cert_file).read_bytes())
        except (OSError, ValueError) as e:
            raise YumenError(Code.INVALID_ARGUMENT, f"cannot read certificate {args.cert_file}: {e}") from None
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        name = name or cert.subject.rfc4514_string()
    with _admin(args) as c:
        r = c.revoke_certificate(fingerprint, name=name, reason=args.reason or "")
    if args.json:
        _print_json(r)
    else:
        print(f"certificate {r['fingerprint'][:16]}… ({r['name']}) revoked; calls made with it are refused from now on")
    return 0


def _cert_list(args: argparse.Namespace) -> int:
    with _admin(args) as c:
        rows = c.revoked()
    if args.json:
        _print_json({"revoked": rows})
    else:
        for r in rows:
            print(f"{r['fingerprint'][:16]}…  {r['name']}  by {r['revoked_by']}: {r['reason']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("admin", help="the data authority: licenses and policy")
    asub = p.add_subparsers(dest="admin_command", metavar="AREA", required=True)

    lic = asub.add_parser("license", help="issue, suspend, resume, renew, revoke and list operator licenses")
    lsub = lic.add_subparsers(dest="license_command", metavar="ACTION", required=True)
    issue = lsub.add_parser("issue", help="issue a license")
    issue.add_argument("--id", required=True)
    issue.add_argument("--organization", required=True)
    issue.add_argument("--group", default="licensed", help="the policy's license group (default: licensed)")
    issue.add_argument("--purpose", action="append", choices=[x.value for x in Purpose], help="repeatable; default all")
    issue.add_argument("--level", action="append", choices=["L1", "L2", "L3"], help="repeatable; default L1 and L2")
    issue.add_argument("--from", dest="valid_from", help="start of validity (default now)")
    issue.add_argument("--until", help="end of validity (default one year)")
    issue.add_argument("--json", action="store_true")
    _conn_args(issue)
    issue.set_defaults(func=_issue)
    for action, helptext in (("suspend", "suspend a license (its queued jobs are cancelled)"),
                             ("resume", "reinstate a suspended license"),
                             ("renew", "extend a license's validity"),
                             ("revoke", "revoke a license for good (its queued jobs are cancelled)")):
        a = lsub.add_parser(action, help=helptext)
        a.add_argument("id")
        if action == "renew":
            a.add_argument("--until", required=True, help="new end of validity, e.g. 2027-12-31")
        a.add_argument("--reason", help="recorded in the log")
        a.add_argument("--json", action="store_true")
        _conn_args(a)
        a.set_defaults(func=_change, action=action)
    ls = lsub.add_parser("list", help="list licenses")
    ls.add_argument("--json", action="store_true")
    _conn_args(ls)
    ls.set_defaults(func=_list)

    cert = asub.add_parser("cert", help="revoke certificates of the data space")
    csub = cert.add_subparsers(dest="cert_command", metavar="ACTION", required=True)
    rv = csub.add_parser("revoke", help="revoke a certificate at once (a connector holding it is disconnected)")
    rv.add_argument("--certificate", dest="cert_file", help="the certificate file (PEM)")
    rv.add_argument("--fingerprint", help="or its SHA-256 fingerprint, hex")
    rv.add_argument("--name", help="who holds it, for the record")
    rv.add_argument("--reason")
    rv.add_argument("--json", action="store_true")
    _conn_args(rv)
    rv.set_defaults(func=_cert_revoke)
    rl = csub.add_parser("list", help="list revoked certificates")
    rl.add_argument("--json", action="store_true")
    _conn_args(rl)
    rl.set_defaults(func=_cert_list)

    pol = asub.add_parser("policy", help="show or change the usage-control policy")
    psub = pol.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    show = psub.add_parser("show", help="print the current (or a named) policy version")
    show.add_argument("--version")
    show.add_argument("--json", action="store_true")
    _conn_args(show)
    show.set_defaults(func=_policy_show)
    st = psub.add_parser("set", help="put a new policy version in force (atomic, logged)")
    st.add_argument("--rules", help="Casbin p/g lines (default: the packaged default)")
    st.add_argument("--settings", help="TOML with level defaults, obligations, pricing (default: packaged)")
    st.add_argument("--model", help="Casbin model (default: the packaged model)")
    st.add_argument("--replaces", metavar="VERSION",
                    help="the version this one replaces (default: the one in force now); refused if another "
                         "change came first")
    st.add_argument("--json", action="store_true")
    _conn_args(st)
    st.set_defaults(func=_policy_set)
