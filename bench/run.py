"""Run the benchmarks and write ``bench/results.json`` with what this run measured, and nothing else.

``python -m bench.run`` runs every module in :data:`MODULES`; ``python -m bench.run NAME ...``
runs only those (``throughput``, ``audit``, ...). The file is rewritten, never merged: a
figure in it was measured by the run its ``meta`` describes (commit, cores, memory, date,
load average before and after), on this machine, beside its baseline. A module that raises
is recorded under ``meta.failed`` with its error and the run exits 1: a backend that cannot
run is a failure, not a silent gap.

A module is ``bench/bench_<name>.py`` with ``run(results: dict[str, float]) -> None`` adding
flat keys (``<figure>.<statistic>``, e.g. ``query_latency.c32.p99_ms``); registering it is
one line in :data:`MODULES`. Keys must be new: a module that writes a key another module
wrote fails the run (no figure is published twice under two names).

``YUMEN_BENCH_BUDGET_S`` caps the whole run (default 1200 s): once it is spent, the modules
not yet started are recorded as failed ("not run: time budget spent") instead of run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"

#: Every benchmark module, in the order a full run takes them (one line each).
MODULES: tuple[str, ...] = (
    "policy",            # policy decisions per second (Casbin) with 10,000 licenses
    "privacy",           # DP queries beside plain Polars, OpenDP's own release, CKKS sums
    "e2e",               # one DP count through a local data space, beside a plain Polars scan
    "throughput",        # 1, 8 and 32 concurrent operators through one broker and connector
    "audit",             # log appends, proofs and verification of a 1M-entry log, idle and loaded
    "sources",           # rows per second through each data source kind
    "sandbox",           # start-up of every sandbox backend beside bare Python
    "sample_aggregate",  # sample-and-aggregate with 20 blocks beside one run
    "verification",      # verification queries per second beside an indexed lookup
)


#: What a module needs from the machine beyond the virtualenv; prepared once, idempotently.
NEEDS: dict[str, tuple[str, ...]] = {
    "sandbox": ("docker", "runtime"),
    "sample_aggregate": ("runtime",),
    "sources": ("postgres",),
}
POSTGRES_DSN_ENV = "YUMEN_TEST_POSTGRES_DSN"


def _sh(*cmd: str, timeout: float = 1800) -> str:
    out = subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {' / '.join(tail)}")
    return out.stdout


def prepare(needs: set[str]) -> dict[str, str]:
    """Start or build what the chosen modules need (the same idempotent scripts CI uses);
    returns, per need that could not be met, why."""
    missing: dict[str, str] = {}
    steps = [
        ("docker", lambda: _sh("bash", "scripts/setup_docker.sh")),
        ("runtime", lambda: _sh(str(Path(sys.executable).parent / "yumen"), "sandbox", "build-runtime",
                                *(["--docker"] if "docker" in needs and "docker" not in missing else []))),
        ("postgres", lambda: os.environ.setdefault(
            POSTGRES_DSN_ENV, _sh("bash", "scripts/setup_postgres.sh").strip().splitlines()[-1])),
    ]
    for need, step in steps:
        if need not in needs:
            continue
        print(f"== preparing {need}", flush=True)
        try:
            step()
        except (OSError, RuntimeError, IndexError, subprocess.TimeoutExpired) as e:
            missing[need] = f"{need} could not be prepared: {e}"
            print(f"   {missing[need]}", flush=True)
    return missing


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _memory_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def machine() -> dict[str, Any]:
    """What the figures were measured on and when (the ``meta`` of results.json)."""
    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "python": sys.version.split()[0],
        "load_average_before": _load(),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"modules to run (default: all of {', '.join(MODULES)})")
    parser.add_argument("--no-prepare", action="store_true",
                        help="do not run scripts/setup_*.sh or build the sandbox runtime first")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results (default: %(default)s)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    chosen = [m for m in MODULES if not args.modules or m in args.modules]
    budget = float(os.environ.get("YUMEN_BENCH_BUDGET_S", "1200"))

    meta = machine()
    meta["modules"] = chosen
    meta["partial"] = chosen != list(MODULES)
    results: dict[str, float] = {}
    owner: dict[str, str] = {}
    failed: dict[str, str] = {}
    seconds: dict[str, float] = {}
    started = time.monotonic()
    needs = {need for name in chosen for need in NEEDS.get(name, ())}
    missing = {} if args.no_prepare else prepare(needs)
    for n, name in enumerate(chosen, 1):
        elapsed = time.monotonic() - started
        print(f"== [{n}/{len(chosen)}] {name}  ({elapsed:.0f} s elapsed, load {' '.join(map(str, _load()))})", flush=True)
        if elapsed > budget:
            failed[name] = f"not run: the time budget of {budget:.0f} s (YUMEN_BENCH_BUDGET_S) was spent"
            print(f"   {failed[name]}", flush=True)
            continue
        unmet = [missing[need] for need in NEEDS.get(name, ()) if need in missing]
        if unmet:
            failed[name] = "not run: " + "; ".join(unmet)
            print(f"   {failed[name]}", flush=True)
            continue
        t = time.monotonic()
        fresh: dict[str, float] = {}
        try:
            importlib.import_module(f"bench.bench_{name}").run(fresh)
        except Exception as e:  # noqa: BLE001 - recorded as this module's failure; the others still run
            traceback.print_exc()
            failed[name] = f"{type(e).__name__}: {e}"[:2000]
        seconds[name] = round(time.monotonic() - t, 1)
        for key, value in sorted(fresh.items()):
            if key in owner:
                failed[name] = f"key {key} was already written by module {owner[key]}"
                continue
            owner[key] = name
            results[key] = float(value)
            print(f"   {key} = {value:.6g}", flush=True)
        print(f"   ({seconds[name]:.1f} s{'; FAILED' if name in failed else ''})", flush=True)

    meta["load_average_after"] = _load()
    meta["seconds"] = seconds
    meta["total_seconds"] = round(time.monotonic() - started, 1)
    meta["failed"] = failed
    args.out.write_text(json.dumps({"meta": meta, "results": dict(sorted(results.items()))}, indent=2,
                                   ensure_ascii=False) + "\n")
    print(f"wrote {len(results)} figures to {args.out} in {meta['total_seconds']:.0f} s", flush=True)
    if args.out.resolve() == RESULTS:
        from bench import docs_tables

        docs_tables.main([])  # the docs quote this run, and only this run
    if failed:
        for name, why in failed.items():
            print(f"FAILED {name}: {why.splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
