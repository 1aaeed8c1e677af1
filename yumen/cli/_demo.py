"""``yumen demo``: the whole data space on this machine, and one job of each kind.

Starts a broker and five department connectors (weather, health care, transport, culture
and tourism, agriculture) as separate processes with their own certificates, then, as a
licensed operator over mutual TLS: lists the catalog, runs a DP query, asks what a
commercial query would cost and runs it, runs a sandboxed algorithm, and submits a job
the policy denies. It ends with the auditor exporting, verifying and replaying the
transparency log, and leaves everything in ``.yumen-demo/``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from yumen.errors import Code, YumenError

_EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "algorithms"


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _yumen(env: dict[str, str], *args: str, expect: int = 0) -> None:
    print("$ yumen " + " ".join(args), flush=True)
    proc = subprocess.run([sys.executable, "-m", "yumen", *args], env=env, text=True, capture_output=True)
    for stream in (proc.stderr, proc.stdout):
        if stream.strip():
            print("\n".join("  " + line for line in stream.rstrip().splitlines()), flush=True)
    if proc.returncode != expect:
        raise YumenError(Code.INTERNAL, f"`yumen {' '.join(args)}` exited {proc.returncode}, expected {expect}")


def _demo(args: argparse.Namespace) -> int:
    from yumen.localspace import LocalSpace

    root = Path(args.dir).resolve()
    _step("preparing the sandbox runtime (built once, then reused)")
    from yumen.sandbox import build_runtime

    print(f"  runtime {build_runtime().digest}")
    _step(f"setting up a local data space in {root}")
    space = LocalSpace(root)
    space.setup()
    print(f"  CA, broker, {len(space.departments)} department connectors, 1 operator, 1 auditor, 1 administrator; "
          "synthetic data generated")
    with space:
        space.start()
        print(f"  broker on {space.address}; connectors of {', '.join(d.id for d in space.departments)} connected "
              "(each dials out: no department opens a port)")
        print("  the administrator issued license LIC-2026-0001 to the operator (L1–L3 data, all purposes)")
        env = space.cli_env("operator-1")
        _step("the operator browses the catalog (metadata only, never rows)")
        _yumen(env, "catalog", "list")
        _step("a DP query: mean outpatient cost by region (L3 data, research purpose)")
        _yumen(env, "submit", "query", "--dataset", "outpatient-visits", "--aggregate", "mean",
               "--column", "cost_yuan", "--group-by", "region", "--epsilon", "0.5", "--purpose", "research")
        _step("before spending budget: what would a commercial query on bus trips be allowed and cost?")
        _yumen(env, "policy", "explain", "--dataset", "bus-trips", "--aggregate", "sum", "--column", "fare_yuan",
               "--group-by", "card_type", "--epsilon", "0.5", "--purpose", "commercial")
        _step("the commercial query itself: fares by card type (billed at the government-guided price)")
        _yumen(env, "submit", "query", "--dataset", "bus-trips", "--aggregate", "sum", "--column", "fare_yuan",
               "--group-by", "card_type", "--epsilon", "0.5", "--purpose", "commercial")
        _step("a sandboxed algorithm: seasonal temperatures, run next to the weather data")
        _yumen(env, "submit", "algorithm", str(_EXAMPLES / "seasonal_temperature.py"), "--dataset", "weather-daily",
               "--output", "summer_mean_c=10:30", "--output", "winter_mean_c=-20:5", "--blocks", "10",
               "--timeout", "8", "--epsilon", "1", "--purpose", "public-interest")
        _step("a job the policy denies: commercial use of restricted (L3) health data")
        _yumen(env, "submit", "query", "--dataset", "outpatient-visits", "--aggregate", "count",
               "--epsilon", "0.5", "--purpose", "commercial", expect=4)
        _step("the auditor exports and verifies the transparency log")
        audit_env = space.cli_env("auditor-1")
        out = root / "audit"
        _yumen(audit_env, "audit", "export", "--out", str(out))
        vkey = root / "broker-state" / "log.vkey"
        _yumen(audit_env, "audit", "verify", "--from", str(out), "--vkey", str(vkey), "--state", str(root / "auditor-state"))
        _step("the auditor replays the log: every decision re-decided, the ledger and bills rebuilt")
        _yumen(audit_env, "audit", "replay", "--from", str(out), "--vkey", str(vkey))
        _billing(space, root, out)
    _step("done")
    print(f"  state (certificates, databases, log, process logs) is in {root}")
    return 0


def _billing(space: "object", root: Path, export: Path) -> None:
    """Prices, a statement, a department's revenue and the yearly disclosure (docs/billing.md)."""
    import time

    month, year = time.strftime("%Y-%m", time.gmtime()), time.strftime("%Y", time.gmtime())
    admin, body = space.cli_env("admin-1"), space.cli_env("operating-body-1")  # type: ignore[attr-defined]
    audit_env = space.cli_env("auditor-1")  # type: ignore[attr-defined]
    _step("the posted price catalogue: caps by the authorizing body, actual prices by the operating body")
    _yumen(body, "billing", "catalogue")
    _step("the operating body tries a price above the cap: refused, nothing logged")
    _yumen(body, "billing", "price", "--product", "standard", "--purpose", "commercial", "--unit", "job",
           "--amount", "75", expect=2)
    _step("the operator's statement for this month: one line per job, with the log entries behind it")
    _yumen(admin, "billing", "statement", "--license", "LIC-2026-0001", "--period", month)
    _step("revenue credited to the departments that served the jobs (in proportion to the ε each spent)")
    _yumen(admin, "billing", "revenue", "--period", month, "--department", "transport-dept")
    _yumen(admin, "billing", "revenue", "--period", month)
    _step("the yearly public disclosure (JSON and one self-contained HTML page), from the verified export")
    _yumen(audit_env, "report", "disclosure", "--year", year, "--from", str(export), "--out", str(root / "disclosure"))
    print(f"  open {root / 'disclosure' / f'disclosure-{year}.html'} in a browser (it needs no network)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole data space locally and show a real job end to end")
    p.add_argument("--dir", default=".yumen-demo", help="where to keep the demo's state (default .yumen-demo)")
    p.set_defaults(func=_demo)
