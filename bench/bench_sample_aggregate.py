"""Sample-and-aggregate with k = 20 blocks on bubblewrap, beside one run on the whole dataset.

The same algorithm (seasonal temperatures) on the same 365,000-row weather dataset: once
as an approved algorithm would run (one sandbox over all rows), and as a custom algorithm
runs (partition by privacy unit into 20 blocks; two sandboxes at a time on this 2-core
machine, each importing polars once and running its 10 blocks one after another, each in
a fresh child; DP aggregate), through the connector's own ``run_blocks``. Both are timed
in the same run, alternating, and the figures are medians of ``RUNS``.
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
ALGO = Path(__file__).resolve().parents[1] / "examples" / "algorithms" / "seasonal_temperature.py"


def run(results: dict[str, float]) -> None:
    from yumen.catalog import DatasetRegistration
    from yumen.connectors._executor import FAILED_SHARE, run_blocks
    from yumen.connectors import demo_registration, generate_demo
    from yumen.jobs import OutputRange
    from yumen.privacy import aggregate_blocks, release_outputs
    from yumen.sandbox import SandboxRequest, Status, get_backend

    backend = get_backend("bwrap")
    backend.check()
    reg = DatasetRegistration.from_dict(demo_registration("weather-daily"))
    ranges = [OutputRange(name="summer_mean_c", lower=10, upper=30), OutputRange(name="winter_mean_c", lower=-20, upper=5)]
    source = ALGO.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_demo("weather-daily", ROWS, 1, Path(tmp) / "weather.parquet")

        def one(path: Path) -> dict[str, float]:
            report = backend.run(SandboxRequest(algorithm=source, inputs={"weather-daily": path}, timeout_s=60))
            if report.status is not Status.OK:
                raise RuntimeError(f"benchmark algorithm ended {report.status.value}: {report.error}")
            return report.result or {}

        singles, blocked = [], []
        for _ in range(RUNS):
            t = time.perf_counter()
            release_outputs(one(data), ranges, Fraction(1))
            singles.append(time.perf_counter() - t)
            t = time.perf_counter()
            outputs, statuses, *_ = run_blocks(backend, source, reg, data, K, hashlib.sha256(b"bench").digest(),
                                               params={}, timeout_s=60, memory_mb=512)
            if statuses != {"ok": K}:
                raise RuntimeError(f"benchmark blocks ended {statuses}")
            aggregate_blocks(outputs, [*ranges, OutputRange(name=FAILED_SHARE, lower=0, upper=1)], Fraction(1))
            blocked.append(time.perf_counter() - t)
    single, k20 = statistics.median(singles), statistics.median(blocked)
    results["sample_aggregate_k20.single_ms"] = single * 1000
    results["sample_aggregate_k20.ms"] = k20 * 1000
    results["sample_aggregate_k20.ratio_to_single"] = k20 / single
