"""Queries where the data lives (``connectors/_pushdown*``) against pulling rows to the connector.

Data: the ``bus-trips`` demo dataset (privacy unit ``card_id``, k = 60 rows per card),
1,000,000 and 10,000,000 rows, in PostgreSQL (primary key ``trip_no``) and in Parquet for
Spark. Every pushdown figure is the exact pre-noise aggregate of the same query the pull
path answers, checked equal before timing. Keys (best of a few runs; ``_10m`` at 10 M rows):

``scan_sum.postgres_pull.rows_per_s``           today's pull: PostgreSQL source scan, clamp, sum in Polars (as ``scan_sum.postgres``)
``scan_sum.postgres_pushdown.rows_per_s``       the same sum (rows as units: no truncation) computed in PostgreSQL
``scan_sum.postgres_pushdown.speedup``          pushdown over pull
``dp_sum.postgres_pull.rows_per_s``             a DP sum's exact aggregate with k = 60 truncation, pulled (scan + ``_bounding`` + aggregate)
``dp_sum.postgres_pushdown.rows_per_s``         the same in PostgreSQL (window-function truncation)
``pushdown.postgres.fingerprint_ms``            the engine's version fingerprint (every pushdown job takes one)
``pushdown.peak_rss_mb_1m`` / ``_10m``          the connector's peak RSS answering the pushdown DP sum (fresh process each)
``pull.peak_rss_mb_1m`` / ``_10m``              the same for the pull path, for contrast
``dp_query_spark_10m.ms``                       a grouped DP mean (fare by line, ε = 1) end to end through ``SparkEngine``, warm session
``tumult_spark_10m.ms``                         Tumult Analytics 0.21 on the same Parquet and query (its own venv, pyspark 3.5)
``tumult_spark_10m.timed_out_s``                set instead when Tumult did not finish within the cap

Run alone with ``python -m bench.run pushdown``. Needs PostgreSQL (``YUMEN_TEST_POSTGRES_DSN``
or scripts/setup_postgres.sh), Java 17 for Spark, and PyPI for Tumult's venv (created once
under ~/.cache/yumen-tools). Set ``YUMEN_BENCH_PUSHDOWN_ROWS=1000000`` to skip the 10 M runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
DATASET = "bus-trips"
DSN_ENV = "YUMEN_BENCH_PUSHDOWN_DSN"
TUMULT = "0.21.0"
TUMULT_CAP_S = 600


def _best(fn: Callable[[], object], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _registrations():
    from yumen.catalog import DatasetRegistration
    from yumen.connectors._demodata import demo_registration

    d = demo_registration(DATASET)
    bounded = DatasetRegistration.from_dict(d)
    rows = DatasetRegistration.from_dict({**d, "privacy_unit": {"column": "", "max_contributions": 1}})
    return bounded, rows


def _postgres_dsn() -> str:
    dsn = os.environ.get("YUMEN_TEST_POSTGRES_DSN", "")
    if dsn:
        return dsn
    out = subprocess.run(["bash", str(ROOT / "scripts" / "setup_postgres.sh")], capture_output=True, text=True, timeout=300)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError("no PostgreSQL: set YUMEN_TEST_POSTGRES_DSN or make scripts/setup_postgres.sh work")
    return out.stdout.strip().splitlines()[-1]


def _sum_plan(reg):
    from yumen.privacy import QuerySpec, Statistic
    from yumen.privacy._plan import make_plan

    return make_plan(reg, QuerySpec(statistic=Statistic.SUM, column="fare_yuan"), Fraction(1))


def _pull_aggregate(source, reg, plan):
    from yumen.privacy import PolarsEngine, bound_contributions

    bounded = bound_contributions(source.scan(), reg)
    return PolarsEngine(bounded.frame.lazy()).aggregate(reg, [plan])


def _push_aggregate(source, reg, plan):
    with source.pushdown_engine() as engine:
        return engine.aggregate(reg, [plan])


def _peak_rss(mode: str, table: str) -> float:
    """Peak RSS (MiB) of a fresh process answering the DP sum by ``mode`` (pull or pushdown)."""
    code = (
        "import sys\n"
        "from bench.bench_pushdown import _registrations, _sum_plan, _pull_aggregate, _push_aggregate\n"
        "from yumen.connectors._sources import SourceSpec, open_source\n"
        f"src = open_source(SourceSpec(kind='postgres', table={table!r}, dsn_env={DSN_ENV!r}, pushdown=True))\n"
        "reg, _ = _registrations()\n"
        f"({'_pull_aggregate' if mode == 'pull' else '_push_aggregate'})(src, reg, _sum_plan(reg))\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) parent
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                         env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(f"peak RSS run failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _tumult_python() -> Path:
    tools = Path(os.environ.get("YUMEN_TOOLS_DIR", Path.home() / ".cache" / "yumen-tools"))
    venv = tools / f"tumult-{TUMULT}"
    py = venv / "bin" / "python"
    if not py.exists():
        # its pins (pyspark 3.5, numpy 1.26, pandas 1.5) clash with the project's: a venv of its own
        tools.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"tmlt.analytics=={TUMULT}"], check=True,
                       timeout=1800)
    return py


def _postgres(results: dict[str, float], parquet: Path, sizes: list[int]) -> None:
    import psycopg

    from yumen.connectors._source_postgres import write_postgres_table
    from yumen.connectors._sources import VERSION_CACHE, SourceSpec, open_source

    dsn = _postgres_dsn()
    os.environ[DSN_ENV] = dsn
    bounded_reg, rows_reg = _registrations()
    col = next(c for c in rows_reg.columns if c.name == "fare_yuan")
    clip_sum = pl.col("fare_yuan").clip(col.lower, col.upper).sum()
    for n in sizes:
        suffix = "" if n == 1_000_000 else f"_{n // 1_000_000}m"
        table = f"bench_pushdown_{uuid.uuid4().hex[:8]}"
        head = pl.scan_parquet(parquet).head(n).collect()
        write_postgres_table(head, dsn, table, primary_key="trip_no")
        del head
        try:
            with psycopg.connect(dsn, autocommit=True) as db:
                db.execute(f"VACUUM ANALYZE {table}")
            src = open_source(SourceSpec(kind="postgres", table=table, dsn_env=DSN_ENV, pushdown=True))
            plan_rows, plan_bounded = _sum_plan(rows_reg), _sum_plan(bounded_reg)
            # the answers agree before anything is timed
            if _push_aggregate(src, rows_reg, plan_rows) != _pull_aggregate(src, rows_reg, plan_rows):
                raise RuntimeError("pushdown and pull disagree on the plain sum")
            if _push_aggregate(src, bounded_reg, plan_bounded) != _pull_aggregate(src, bounded_reg, plan_bounded):
                raise RuntimeError("pushdown and pull disagree on the bounded sum")
            runs = 3 if n <= 1_000_000 else 2
            pull = n / _best(lambda: src.scan().select(clip_sum).collect(), runs)
            push = n / _best(lambda: _push_aggregate(src, rows_reg, plan_rows), runs)
            results[f"scan_sum.postgres_pull{suffix}.rows_per_s"] = pull
            results[f"scan_sum.postgres_pushdown{suffix}.rows_per_s"] = push
            results[f"scan_sum.postgres_pushdown{suffix}.speedup"] = push / pull
            results[f"dp_sum.postgres_pull{suffix}.rows_per_s"] = n / _best(
                lambda: _pull_aggregate(src, bounded_reg, plan_bounded), runs)
            results[f"dp_sum.postgres_pushdown{suffix}.rows_per_s"] = n / _best(
                lambda: _push_aggregate(src, bounded_reg, plan_bounded), runs)

            def fingerprint() -> None:
                VERSION_CACHE.clear()  # the full computation, as on a busy cluster (quiet ones cache it)
                with src.pushdown_engine() as engine:
                    engine.fingerprint()

            results[f"pushdown.postgres{suffix}.fingerprint_ms"] = 1000 * _best(fingerprint, runs)
            tag = f"{n // 1_000_000}m"
            results[f"pushdown.peak_rss_mb_{tag}"] = _peak_rss("pushdown", table)
            results[f"pull.peak_rss_mb_{tag}"] = _peak_rss("pull", table)
            print(f"   {n} rows: " + ", ".join(f"{k}={v:.4g}" for k, v in results.items() if suffix in k or tag in k),
                  flush=True)
        finally:
            with psycopg.connect(dsn, autocommit=True) as db:
                db.execute(f"DROP TABLE IF EXISTS {table}")


TUMULT_SCRIPT = r'''
import json, sys, time
from pyspark.sql import SparkSession
from tmlt.analytics import AddRowsWithID, KeySet, MaxRowsPerID, PureDPBudget, QueryBuilder, Session
spark = (SparkSession.builder.master("local[*]").config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.driver.host", "127.0.0.1").config("spark.driver.memory", "6g")
         .config("spark.sql.shuffle.partitions", "8").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
path, lines, k, lo, hi = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
df = spark.read.parquet(path).select("card_id", "line", "fare_yuan")
t0 = time.perf_counter()
session = Session.from_dataframe(privacy_budget=PureDPBudget(1), source_id="trips", dataframe=df,
                                 protected_change=AddRowsWithID("card_id"))
t1 = time.perf_counter()
query = (QueryBuilder("trips").enforce(MaxRowsPerID(k)).groupby(KeySet.from_dict({"line": lines}))
         .average("fare_yuan", low=lo, high=hi))
out = session.evaluate(query, PureDPBudget(1)).collect()
t2 = time.perf_counter()
print(json.dumps({"session_ms": 1000 * (t1 - t0), "evaluate_ms": 1000 * (t2 - t1), "groups": len(out)}))
'''


def _spark(results: dict[str, float], parquet: Path, n: int) -> None:
    from yumen.connectors._source_spark import SparkSource
    from yumen.connectors._sources import SourceSpec
    from yumen.privacy import QuerySpec, Statistic, dp_query

    reg, _ = _registrations()
    spec = SourceSpec(kind="spark", format="parquet", path=str(parquet), order_by=("trip_no",), pushdown=True,
                      spark_conf=(("spark.driver.memory", "6g"), ("spark.sql.shuffle.partitions", "8")))
    query = QuerySpec(statistic=Statistic.MEAN, column="fare_yuan", group_by="line")
    src = SparkSource(spec)

    def once() -> None:
        with src.pushdown_engine() as engine:
            dp_query(engine, reg, query, Fraction(1))

    once()  # warm: the JVM, the file listing
    tag = f"{n // 1_000_000}m"
    results[f"dp_query_spark_{tag}.ms"] = 1000 * _best(once, runs=2)
    lines = json.dumps(list(reg.column("line").categories))
    col = reg.column("fare_yuan")
    started = time.perf_counter()
    try:
        py = str(_tumult_python())
        # Spark's Python workers must be Tumult's interpreter too, not whatever python3 is on PATH
        env = dict(os.environ, PYSPARK_PYTHON=py, PYSPARK_DRIVER_PYTHON=py)
        out = subprocess.run([py, "-c", TUMULT_SCRIPT, str(parquet), lines,
                              str(reg.privacy_unit.max_contributions), str(col.lower), str(col.upper)],
                             capture_output=True, text=True, timeout=TUMULT_CAP_S, env=env)
    except subprocess.TimeoutExpired:
        results[f"tumult_spark_{tag}.timed_out_s"] = float(TUMULT_CAP_S)
        print(f"   Tumult did not finish within {TUMULT_CAP_S} s", flush=True)
        return
    if out.returncode != 0:
        raise RuntimeError(f"Tumult failed: {out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    results[f"tumult_spark_{tag}.ms"] = got["evaluate_ms"]
    results[f"tumult_spark_{tag}.session_ms"] = got["session_ms"]
    print(f"   Tumult: {got} (wall {time.perf_counter() - started:.0f} s)", flush=True)


def run(results: dict[str, float]) -> None:
    from yumen.connectors._demodata import generate

    top = int(os.environ.get("YUMEN_BENCH_PUSHDOWN_ROWS", "10000000"))
    sizes = [n for n in (1_000_000, 10_000_000) if n <= top]
    with tempfile.TemporaryDirectory(prefix="yumen-bench-pushdown-") as tmp:
        parquet = generate(DATASET, sizes[-1], seed=1, out_path=Path(tmp) / "trips.parquet")
        numbered = Path(tmp) / "trips-numbered.parquet"
        pl.scan_parquet(parquet).with_row_index("trip_no").with_columns(pl.col("trip_no").cast(pl.Int64)).sink_parquet(numbered)
        _postgres(results, numbered, sizes)
        _spark(results, numbered, sizes[-1])
