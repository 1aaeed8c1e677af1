"""Start-up cost of each sandbox backend, measured beside bare Python in the same run.

The algorithm is trivial (write ``{"a": 1}``), so the numbers are the isolation's fixed
cost per execution. "bare" runs the same source with the host's Debian
``/usr/bin/python3`` (the same CPython 3.11 build the runtime rootfs contains) and no
isolation at all; it falls back to ``sys.executable`` when that interpreter is missing.
Each figure is the median of 20 runs. ``sandbox_mem.<backend>.kb`` is the median peak
resident set of the sandboxed processes (the launcher and the algorithm).

Every backend is measured twice in the same run: ``sandbox_start_cold.<backend>`` creates
and starts a sandbox per job (warm sandboxes off; ``algo_trivial_bwrap`` is bubblewrap's
cold figure), ``sandbox_start.<backend>`` takes a started, never-used sandbox from the warm
pool (``pool_size=2``, as a connector runs by default). Before each warm run the pool is
refilled and the used sandboxes removed (neither is timed): the figure is the latency of a
job that finds a warm sandbox, not the throughput of a burst larger than the pool (those
start cold).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 20
ALGORITHM = (
    b"import json, os\n"
    b"json.dump({'a': 1}, open(os.environ.get('YUMEN_BENCH_OUT', '/data/output/result.json'), 'w'))\n"
)


def _bare_ms() -> float:
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    with tempfile.TemporaryDirectory(prefix="yumen-bench-sandbox-") as tmp:
        algo = Path(tmp) / "algo.py"
        algo.write_bytes(ALGORITHM)
        env = {"PATH": "/usr/bin:/bin", "YUMEN_BENCH_OUT": str(Path(tmp) / "result.json")}
        times = []
        for _ in range(RUNS):
            started = time.perf_counter()
            subprocess.run([python, "-I", str(algo)], env=env, check=True)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _backend_ms(name: str, *, pool_size: int = 0) -> tuple[float, float]:
    from yumen.errors import YumenError
    from yumen.sandbox import SandboxRequest, Status, get_backend

    backend = get_backend(name, pool_size=pool_size)
    try:
        backend.check()
    except YumenError as e:  # every backend is measured: one that cannot run fails the module
        raise RuntimeError(f"sandbox backend {name} cannot run here: {e}") from e
    request = SandboxRequest(algorithm=ALGORITHM, timeout_s=30)
    pool = backend.warm_up(request) if pool_size else None
    times, rss = [], []
    for _ in range(RUNS):
        if pool is not None:
            from yumen.sandbox._pool import reaper

            if not pool.wait_full(120) or not reaper().drain(120):
                raise RuntimeError(f"{name}: the warm pool did not refill")
            time.sleep(0.2)  # let the engine settle after the refill
        started = time.perf_counter()
        report = backend.run(request)
        times.append((time.perf_counter() - started) * 1000)
        if report.status is not Status.OK:
            raise RuntimeError(f"{name}: trivial algorithm ended {report.status.value}: {report.error}")
        rss.append(report.usage.max_rss_kb)
    return statistics.median(times), statistics.median(rss)


def run(results: dict) -> None:
    bare = _bare_ms()
    results["sandbox_start.bare.p50_ms"] = bare
    from yumen.sandboxes import BACKENDS

    for name in BACKENDS:
        cold = _backend_ms(name)
        results[f"sandbox_start_cold.{name}.p50_ms"] = cold[0]
        ms, kb = _backend_ms(name, pool_size=2)
        results[f"sandbox_start.{name}.p50_ms"] = ms
        results[f"sandbox_overhead.{name}.p50_ms"] = cold[0] - bare  # what isolation costs a cold start
        results[f"sandbox_mem.{name}.kb"] = kb


if __name__ == "__main__":
    out: dict[str, float] = {}
    run(out)
    from yumen.sandbox._pool import close_pools

    close_pools()
    for key, value in sorted(out.items()):
        print(f"{key} = {value:.1f}")
