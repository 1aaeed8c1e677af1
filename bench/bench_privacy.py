"""Privacy benchmarks: DP queries next to plain Polars, OpenDP's own Polars release, CKKS sums.

Metrics (added to ``results``; every ratio is measured against its baseline in the same run,
interleaved, median of several runs):

``dp_groupby_10m.ratio_to_polars``           count + sum + mean grouped by a declared category
                                             over 10,000,000 rows (row-level units), one
                                             ``dp_queries`` call, vs one plain Polars
                                             ``group_by().agg(len, sum, mean)``
``dp_groupby_10m.dp_ms`` / ``.polars_ms``    the two medians behind that ratio
``dp_groupby_10m_separate.ratio_to_polars``  three ``dp_query`` calls vs three plain group-bys
``dp_groupby_10m_bounded.ratio_to_polars``   as the first, 2,000,000 units of up to 8 rows,
                                             on a ``BoundedFrame`` (truncated once per version)
``dp_groupby_10m_units.ratio_to_polars``     the same, truncating inside the call
``bound_contributions_10m.ms``               truncating 10 M rows to 8 per unit, once
``dp_query_1m.p50_ms``                       ``dp_query`` count on 1,000,000 rows (row-level units)
``dp_query_1m_units.p50_ms``                 the same with 300,000 units truncated in the call
``dp_count_1m_opendp_polars_release.p50_ms`` stock OpenDP ``Context.query().select(dp.len()).release()``
``he_combine_20x4096.ms``                    broker-side ``he_sum`` of 20 departments' 4,096-slot vectors
``he_public_context.bytes`` / ``he_ciphertext.bytes``  sizes on the wire

Data is generated in memory with numpy (only the data: every noise draw is OpenDP's).
"""

from __future__ import annotations

import statistics
import time
import warnings
from fractions import Fraction
from typing import Callable

import numpy as np
import polars as pl

from yumen.catalog import Column, ColumnType, DatasetRegistration, Level, PrivacyUnit
from yumen.jobs import Aggregate, Query
from yumen.privacy import bound_contributions, dp_queries, dp_query, he_encrypt, he_keygen, he_sum

DISTRICTS = tuple(f"district-{i:02d}" for i in range(16))
EPS = Fraction(1, 3)


def _registration(unit: bool) -> DatasetRegistration:
    columns = (
        Column(name="resident_id", type=ColumnType.INT, lower=0, upper=10_000_000),
        Column(name="district", type=ColumnType.CATEGORY, categories=DISTRICTS),
        Column(name="income", type=ColumnType.FLOAT, unit="kCNY", lower=0.0, upper=500.0),
    )
    return DatasetRegistration(
        id="bench-income",
        title="Synthetic incomes",
        department="bench",
        level=Level.L2,
        columns=columns,
        privacy_unit=PrivacyUnit(column="resident_id", max_contributions=8) if unit else PrivacyUnit(),
    )


def _frame(rows: int, units: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "resident_id": rng.integers(0, units, rows),
            # 1 in 17 rows carries an undeclared district: dropped, never released
            "district": rng.choice(list(DISTRICTS) + ["unknown"], rows),
            "income": rng.lognormal(4.0, 0.8, rows),
        }
    )


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _interleaved(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def _bench_groupby(results: dict) -> None:
    df = _frame(10_000_000, 2_000_000, seed=1)
    lf = df.lazy()
    rows, units = _registration(False), _registration(True)
    queries = [
        Query(aggregate=Aggregate.COUNT, group_by="district"),
        Query(aggregate=Aggregate.SUM, column="income", group_by="district"),
        Query(aggregate=Aggregate.MEAN, column="income", group_by="district"),
    ]

    def plain() -> object:
        return lf.group_by("district").agg(
            pl.len(), pl.col("income").sum().alias("sum"), pl.col("income").mean().alias("mean")
        ).collect()

    def plain_three() -> object:
        return [
            lf.group_by("district").agg(pl.len()).collect(),
            lf.group_by("district").agg(pl.col("income").sum()).collect(),
            lf.group_by("district").agg(pl.col("income").mean()).collect(),
        ]

    dp_queries(lf, rows, queries, [EPS] * 3)  # warm the calibration cache
    m = _interleaved(
        {
            "plain": plain,
            "dp": lambda: dp_queries(lf, rows, queries, [EPS] * 3),
            "plain_three": plain_three,
            "dp_three": lambda: [dp_query(lf, rows, q, EPS) for q in queries],
        },
        runs=7,
    )
    results["dp_groupby_10m.ratio_to_polars"] = m["dp"] / m["plain"]
    results["dp_groupby_10m.dp_ms"] = m["dp"]
    results["dp_groupby_10m.polars_ms"] = m["plain"]
    results["dp_groupby_10m_separate.ratio_to_polars"] = m["dp_three"] / m["plain_three"]

    t = time.perf_counter()
    bounded = bound_contributions(lf, units)
    results["bound_contributions_10m.ms"] = (time.perf_counter() - t) * 1000
    m = _interleaved({"plain": plain, "dp": lambda: dp_queries(bounded, units, queries, [EPS] * 3)}, runs=5)
    results["dp_groupby_10m_bounded.ratio_to_polars"] = m["dp"] / m["plain"]
    m = _interleaved({"plain": plain, "dp": lambda: dp_queries(lf, units, queries, [EPS] * 3)}, runs=2)
    results["dp_groupby_10m_units.ratio_to_polars"] = m["dp"] / m["plain"]


def _bench_1m(results: dict) -> None:
    lf = _frame(1_000_000, 300_000, seed=2).lazy()
    count = Query(aggregate=Aggregate.COUNT)
    rows, units = _registration(False), _registration(True)
    dp_query(lf, rows, count, EPS)
    results["dp_query_1m.p50_ms"] = _median_ms(lambda: dp_query(lf, rows, count, EPS), runs=21)
    results["dp_query_1m_units.p50_ms"] = _median_ms(lambda: dp_query(lf, units, count, EPS), runs=11)

    import opendp.prelude as dp

    dp.enable_features("contrib")
    releases = 5
    ctx = dp.Context.compositor(
        data=lf,
        privacy_unit=dp.unit_of(contributions=1),
        privacy_loss=dp.loss_of(epsilon=float(EPS) * releases),
        split_evenly_over=releases,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results["dp_count_1m_opendp_polars_release.p50_ms"] = _median_ms(
            lambda: ctx.query().select(dp.len()).release().collect(), runs=releases
        )


def _bench_he(results: dict) -> None:
    _, public = he_keygen()
    rng = np.random.default_rng(3)
    cts = [he_encrypt(public, rng.normal(0, 100, 4096).tolist()) for _ in range(20)]
    results["he_combine_20x4096.ms"] = _median_ms(lambda: he_sum(public, cts), runs=5)
    results["he_public_context.bytes"] = float(len(public))
    results["he_ciphertext.bytes"] = float(len(cts[0]))


def run(results: dict) -> None:
    _bench_1m(results)
    _bench_he(results)
    _bench_groupby(results)


if __name__ == "__main__":
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    run(out)
    for key, value in sorted(out.items()):
        print(f"{key:48s} {value:12.2f}")
    print(f"{'(bench wall s)':48s} {time.perf_counter() - t0:12.1f}")
