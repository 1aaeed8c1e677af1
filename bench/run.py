"""Run every ``bench/bench_*.py`` module and write ``bench/results.json``.

``python -m bench.run [NAME ...]`` runs all modules, or only those whose name contains
one of the given words. Results are merged into the existing file so a partial run
keeps the other numbers.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    out = HERE / "results.json"
    results: dict[str, float] = json.loads(out.read_text()) if out.exists() else {}
    failed = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem
        if argv and not any(a in name for a in argv):
            continue
        started = time.monotonic()
        print(f"== {name}", flush=True)
        fresh: dict[str, float] = {}
        try:
            importlib.import_module(f"bench.{name}").run(fresh)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
        for k, v in sorted(fresh.items()):
            print(f"   {k} = {v:.6g}")
        results.update(fresh)
        print(f"   ({time.monotonic() - started:.1f} s)", flush=True)
        out.write_text(json.dumps(dict(sorted(results.items())), indent=2) + "\n")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
