"""Sample-and-aggregate with k = 20 blocks on bubblewrap, beside one run on the whole dataset.

The same algorithm (seasonal temperatures) on the same 365,000-row weather dataset: once
as an approved algorithm would run (one warm sandbox over all rows), and as a custom
algorithm runs (partition by privacy unit into 20 blocks; each block in a fresh warm
sandbox of its own with polars already imported, two at a time on this 2-core machine;
DP aggregate), through the connector's own ``run_blocks``. Both are timed in the same run,
alternating, and the figures are medians of ``RUNS``; the pool is full before each.

The connector starts wave *i* of blocks at *i* · (per-block limit + ``wave_slack_s``), so a
job's wall time is set by its limits, not by its work (and its result is held to a fixed
release time anyway). To measure the work, the blocks here get the smallest per-block limit
a connector accepts (0.5 s) and no slack: ``sample_aggregate_k20.ms`` is then ten waves of
0.5 s plus partitioning, and ``sample_aggregate_k20.busy_ms`` the sum over waves of the
slowest block of the wave (its sandbox's wall time), the time the blocks actually took.
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROWS = 365_000
K = 20
RUNS = 5
PARALLEL = 2
ALGO = Path(__file__).resolve().parents[1] / "examples" / "algorithms" / "seasonal_temperature.py"


def run(results: dict[str, float]) -> None:
    from yumen.catalog import DatasetRegistration
    from yumen.connectors._executor import FAILED_SHARE, run_blocks
    from yumen.connectors import demo_registration, generate_demo
    from yumen.jobs import OutputRange
    from yumen.privacy import aggregate_blocks, release_outputs
    from yumen.sandbox import SandboxRequest, Status, get_backend

    backend = get_backend("bwrap", pool_size=2)
    backend.check()
    reg = DatasetRegistration.from_dict(demo_registration("weather-daily"))
    ranges = [OutputRange(name="summer_mean_c", lower=10, upper=30), OutputRange(name="winter_mean_c", lower=-20, upper=5)]
    source = ALGO.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_demo("weather-daily", ROWS, 1, Path(tmp) / "weather.parquet")

        pool = backend.warm_up(SandboxRequest(algorithm=source, timeout_s=60))

        def one(path: Path) -> dict[str, float]:
            report = backend.run(SandboxRequest(algorithm=source, inputs={"weather-daily": path}, timeout_s=60))
            if report.status is not Status.OK:
                raise RuntimeError(f"benchmark algorithm ended {report.status.value}: {report.error}")
            return report.result or {}

        singles, blocked, busy, warm = [], [], [], []
        for _ in range(RUNS):
            pool.wait_full(120)
            t = time.perf_counter()
            release_outputs(one(data), ranges, Fraction(1))
            singles.append(time.perf_counter() - t)
            pool.wait_full(120)
            taken = pool.stats["taken"]
            t = time.perf_counter()
            outputs, statuses, _, _, _, reports = run_blocks(
                backend, source, reg, data, K, hashlib.sha256(b"bench").digest(), params={}, timeout_s=0.5,
                memory_mb=512, parallel=PARALLEL, wave_slack_s=0.0)
            if statuses != {"ok": K}:
                raise RuntimeError(f"benchmark blocks ended {statuses}")
            aggregate_blocks(outputs, [*ranges, OutputRange(name=FAILED_SHARE, lower=0, upper=1)], Fraction(1))
            blocked.append(time.perf_counter() - t)
            warm.append(pool.stats["taken"] - taken)
            busy.append(sum(max(r.usage.wall_ms for r in reports[w:w + PARALLEL]) for w in range(0, K, PARALLEL)) / 1000)
    single, k20, work = statistics.median(singles), statistics.median(blocked), statistics.median(busy)
    results["sample_aggregate_k20.single_ms"] = single * 1000
    results["sample_aggregate_k20.ms"] = k20 * 1000
    results["sample_aggregate_k20.busy_ms"] = work * 1000
    results["sample_aggregate_k20.ratio_to_single"] = k20 / single
    results["sample_aggregate_k20.busy_ratio_to_single"] = work / single
    results["sample_aggregate_k20.warm_blocks"] = statistics.median(warm)
