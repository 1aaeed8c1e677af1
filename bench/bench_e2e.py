"""End-to-end latency of a DP count query, operator to result, beside plain Polars.

A real local data space (broker and one connector as processes, mTLS gRPC) serves a
1,000,000-row weather dataset. The DP path is timed from the operator's SubmitJob to
the released result; the plain path is a Polars scan of the same Parquet file that reads
every row of a column (not a row count from the file's metadata).

``query_dp_count_1m.p50_ms``            operator's SubmitJob to released result, median of 20
``query_plain_count_1m.p50_ms``         baseline: the plain scan, median of 20
``query_dp_count_1m.ratio_to_plain``    the two medians' ratio
"""

from __future__ import annotations

import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import polars as pl

ROWS = 1_000_000
RUNS = 20


# one per row, computed from the row's value: no answer from the file's metadata can stand in for it
_EVERY_ROW = (pl.col("temp_mean_c").fill_null(0.0) * 0 + 1).cast(pl.Int64).sum()


def _p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def run(results: dict[str, float]) -> None:
    from yumen.jobs import Aggregate, JobRequest, Purpose, Query, Tier
    from yumen.localspace import Department, LocalSpace

    with tempfile.TemporaryDirectory(prefix="yumen-bench-") as tmp:
        space = LocalSpace(Path(tmp), departments=(Department(id="weather-bureau", datasets=(("weather-daily", ROWS),)),))
        space.setup()
        with space:
            space.start(timeout=120)
            path = space.root / "data" / "weather-bureau" / "weather-daily.parquet"
            plain = []
            for _ in range(RUNS):
                t = time.perf_counter()
                n = pl.scan_parquet(path).select(_EVERY_ROW).collect().item()
                plain.append(time.perf_counter() - t)
                if n != ROWS:
                    raise RuntimeError(f"the plain scan counted {n} rows, expected {ROWS}")
            dp = []
            with space.client() as c:
                for i in range(RUNS + 2):
                    t = time.perf_counter()
                    info = c.submit(JobRequest(
                        job_id=f"bench-{i}", datasets=("weather-daily",), tier=Tier.QUERY, purpose=Purpose.RESEARCH,
                        epsilon=Fraction(1, 10), query=Query(aggregate=Aggregate.COUNT),
                    ))
                    for _ in c.watch(info.job_id):
                        pass
                    c.result(info.job_id)
                    if i >= 2:  # the first two warm the connector's caches
                        dp.append(time.perf_counter() - t)
    results["query_plain_count_1m.p50_ms"] = _p50(plain)
    results["query_dp_count_1m.p50_ms"] = _p50(dp)
    results["query_dp_count_1m.ratio_to_plain"] = _p50(dp) / _p50(plain)
