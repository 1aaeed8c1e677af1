"""``yumen connector serve|check|quality|feedback --config FILE`` and ``yumen approvals …``."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from yumen.connectors._agent import ConnectorAgent
    from yumen.connectors._config import load_connector_config

    # Stop requests that arrive while the connector starts (reading certificates, opening
    # state) are kept and honoured as soon as the agent exists.
    stopping: list[object] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(None))
    agent = ConnectorAgent(load_connector_config(Path(args.config)))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: agent.stop())
    if stopping:
        return 0
    print(f"connector {agent.config.id} dialing broker {agent.config.broker}", flush=True)
    agent.run_forever()
    return 0


def _check(args: argparse.Namespace) -> int:
    from yumen.connectors._check import check_config

    return check_config(Path(args.config))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("connector", help="run a department's connector next to its data")
    csub = p.add_subparsers(dest="connector_command", metavar="ACTION", required=True)
    serve = csub.add_parser("serve", help="dial out to the broker and execute its tickets")
    serve.add_argument("--config", required=True, help="connector TOML config")
    serve.set_defaults(func=_serve)
    check = csub.add_parser("check", help="validate the config, certificates, sources and sandbox")
    check.add_argument("--config", required=True, help="connector TOML config")
    check.set_defaults(func=_check)
    quality = csub.add_parser("quality", help="this department's quality report of each data version (published or withheld)")
    feedback = csub.add_parser("feedback", help="quality problems operators flagged on this department's datasets")
    for q, fn in ((quality, _quality), (feedback, _feedback)):
        q.add_argument("--config", required=True, help="connector TOML config")
        q.add_argument("--dataset", help="only this dataset")
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=fn)
    register_approvals(sub)


# -- stewardship: the department's own view, local to the connector's state -------------
def _steward_state(args: argparse.Namespace):  # noqa: ANN202
    from yumen.connectors._config import load_connector_config
    from yumen.connectors._steward_state import StewardState
    from yumen.errors import Code, YumenError

    config = load_connector_config(Path(args.config))
    if args.dataset and args.dataset not in {d.registration.id for d in config.datasets}:
        raise YumenError(Code.NOT_FOUND, f"this connector serves no dataset {args.dataset!r}",
                         hint="its datasets: " + ", ".join(d.registration.id for d in config.datasets))
    return StewardState(config.state_dir / "steward.db")


def _quality(args: argparse.Namespace) -> int:
    import json

    from yumen.canonical import digest_of

    rows = _steward_state(args).reports(args.dataset or "")
    if args.json:
        print(json.dumps({"reports": [dict(r, digest=digest_of(r["report"])) for r in rows]}, indent=2,
                         sort_keys=True, ensure_ascii=False))
        return 0
    if not rows:
        print("no quality reports yet (one is made for each new data version)")
        return 0
    for r in rows:
        report = r["report"]
        state = "published" if r["published"] else "WITHHELD"
        verdict = "passes" if report["passed"] else "fails: " + "; ".join(report["failures"])
        print(f"{r['dataset']:<24} {r['version'][:19]}…  {state:<9} {digest_of(report)[:19]}…  {verdict}")
    return 0


def _feedback(args: argparse.Namespace) -> int:
    import json
    import time

    rows = _steward_state(args).feedback(args.dataset or "")
    if args.json:
        print(json.dumps({"feedback": rows, "count": len(rows)}, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    if not rows:
        print("no feedback from operators")
        return 0
    for f in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(f["received_ms"] / 1000))
        print(f"{when}Z  {f['id']}  {f['dataset']}  {f.get('category', '?'):<10} {f.get('operator', '?')} "
              f"(license {f.get('license', '?')}) on {str(f.get('version', ''))[:19]}…")
        print(f"    {f.get('message', '')}")
    print(f"{len(rows)} item(s)")
    return 0


# -- approvals: the department's review of algorithms, local to the connector's state ----
def _state(args: argparse.Namespace):  # noqa: ANN202
    from yumen.connectors._config import load_connector_config
    from yumen.connectors._state import ConnectorState

    config = load_connector_config(Path(args.config))
    return ConnectorState(config.state_dir / "connector.db")


def _find(state, prefix: str) -> dict:  # noqa: ANN001
    from yumen.errors import Code, YumenError

    matches = [a for a in state.approvals() if a["digest"].startswith(prefix) or a["digest"].removeprefix("sha256:").startswith(prefix)]
    if len(matches) != 1:
        raise YumenError(Code.NOT_FOUND if not matches else Code.INVALID_ARGUMENT,
                         f"{'no' if not matches else 'more than one'} algorithm matches {prefix!r}",
                         hint="list them with `yumen approvals list`")
    return matches[0]


def _approvals_list(args: argparse.Namespace) -> int:
    import json

    rows = _state(args).approvals(args.status or "")
    if args.json:
        print(json.dumps({"approvals": [{k: v for k, v in a.items() if k != "source"} for a in rows]}, indent=2))
        return 0
    for a in rows:
        r = a["request"]
        print(f"{a['digest'][:23]}  {a['status']:<9} {r.get('operator', '?'):<16} {r.get('purpose', '?'):<15} "
              f"{r.get('dataset', '?')}  outputs: {', '.join(o['name'] for o in r.get('outputs', []))}")
    return 0


def _approvals_show(args: argparse.Namespace) -> int:
    a = _find(_state(args), args.digest)
    r = a["request"]
    print(f"algorithm {a['digest']} ({a['status']})")
    print(f"  requested by {r.get('operator')} (license {r.get('license')}) for {r.get('purpose')} use of {r.get('dataset')}")
    print("  declared outputs: " + ", ".join(f"{o['name']} in [{o['lower']}, {o['upper']}]" for o in r.get("outputs", [])))
    if a["limits"]:
        print(f"  limits: {a['limits']}")
    if a["note"]:
        print(f"  note: {a['note']}")
    failures = _state(args).failures(a["digest"])
    if failures:
        print(f"  failures ({len(failures)}; the operator saw only the kind):")
        for f in failures[-10:]:
            print(f"    job {f['job_id']} on {f['dataset']}: {f['kind']}: {f['detail']}")
    print("  source:")
    for line in a["source"].decode(errors="replace").splitlines():
        print(f"    {line}")
    return 0


def _approvals_decide(args: argparse.Namespace) -> int:
    import getpass
    import time as _time

    from yumen.jobs import format_epsilon, parse_epsilon

    state = _state(args)
    a = _find(state, args.digest)
    limits: dict = {}
    if args.action == "approved":
        if args.max_epsilon:
            limits["max_epsilon"] = format_epsilon(parse_epsilon(args.max_epsilon))
        if args.max_runs:
            limits["max_runs"] = int(args.max_runs)
        if args.days:
            limits["until"] = _time.time() + 86400 * float(args.days)
    state.decide_approval(a["digest"], args.action, limits=limits, note=args.note or "", by=getpass.getuser())
    print(f"algorithm {a['digest']} {args.action}" + (f" with limits {limits}" if limits else ""))
    return 0


def register_approvals(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("approvals", help="the department's review of algorithms (run where the connector runs)")
    asub = p.add_subparsers(dest="approvals_command", metavar="ACTION", required=True)
    ls = asub.add_parser("list", help="algorithms awaiting review, approved or rejected")
    ls.add_argument("--status", choices=["pending", "approved", "rejected"])
    ls.add_argument("--json", action="store_true")
    show = asub.add_parser("show", help="an algorithm's source, digest, declared outputs and stated purpose")
    show.add_argument("digest", help="the digest or a unique prefix of it")
    ok = asub.add_parser("approve", help="approve an algorithm by digest, with optional limits")
    ok.add_argument("digest")
    ok.add_argument("--max-epsilon", help="largest ε per job under this approval")
    ok.add_argument("--max-runs", type=int, help="number of runs this approval allows")
    ok.add_argument("--days", type=float, help="days the approval stays valid")
    ok.add_argument("--note")
    no = asub.add_parser("reject", help="reject an algorithm by digest")
    no.add_argument("digest")
    no.add_argument("--note", required=True, help="the reason the operator will see")
    for q, fn in ((ls, _approvals_list), (show, _approvals_show), (ok, _approvals_decide), (no, _approvals_decide)):
        q.add_argument("--config", required=True, help="the connector's TOML config")
        q.set_defaults(func=fn)
    ok.set_defaults(action="approved")
    no.set_defaults(action="rejected")
