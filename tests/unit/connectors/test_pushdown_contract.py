"""One contract for every engine: Polars (the connector pulling rows), PostgreSQL and Spark
(pushdown) compute the same exact pre-noise aggregates for the same queries on the same rows.

Data comes from hypothesis: null and NaN unit ids, units far over their contribution limit,
values outside the registered bounds (and NaN, infinities, nulls), undeclared and null
categories. The Polars side is the connector's pull path: the PostgreSQL source's ordered
rows, bounded by ``privacy/_bounding.py``. PostgreSQL orders by the primary key ``rid``; the
Spark source reads the same rows from Parquet with ``order_by = ["rid"]``, so all three keep
each unit's first k rows by ``rid``.
"""

from __future__ import annotations

import math
import shutil
import uuid
from fractions import Fraction

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yumen.catalog import DatasetRegistration
from yumen.connectors._source_postgres import write_postgres_table
from yumen.connectors._sources import SourceSpec, open_source
from yumen.privacy import Filter, FilterOp, PolarsEngine, QuerySpec, Statistic, bound_contributions
from yumen.privacy._plan import make_plan

pytestmark = [pytest.mark.postgres, pytest.mark.spark, pytest.mark.slow]

REG = DatasetRegistration.from_dict({
    "id": "visits", "title": "visits", "department": "health", "level": "L1",
    "privacy_unit": {"column": "pid", "max_contributions": 2},
    "columns": [
        {"name": "pid", "type": "int", "lower": 0, "upper": 100},
        {"name": "region", "type": "category", "categories": ["a", "b", "c"]},
        {"name": "cost", "type": "float", "lower": 0, "upper": 100},
        {"name": "n", "type": "int", "lower": 0, "upper": 10},
        {"name": "rid", "type": "int", "lower": 0, "upper": 1e6},
    ],
})

QUERIES = (
    QuerySpec(statistic=Statistic.COUNT),
    QuerySpec(statistic=Statistic.COUNT, column="cost"),
    QuerySpec(statistic=Statistic.COUNT, column="region", group_by="region"),
    QuerySpec(statistic=Statistic.SUM, column="cost"),
    QuerySpec(statistic=Statistic.MEAN, column="cost", group_by="region"),
    QuerySpec(statistic=Statistic.VARIANCE, column="n", filters=(Filter(column="cost", op=FilterOp.GE, value=20.0),)),
    QuerySpec(statistic=Statistic.SUM, column="n", group_by="region",
              filters=(Filter(column="region", op=FilterOp.NE, value="c"),)),
    QuerySpec(statistic=Statistic.HISTOGRAM, column="region"),
    QuerySpec(statistic=Statistic.HISTOGRAM, column="cost", bins=7),
    QuerySpec(statistic=Statistic.COUNT, filters=(Filter(column="region", op=FilterOp.IN, value=("a", "b")),
                                                  Filter(column="n", op=FilterOp.LT, value=5.0))),
    QuerySpec(statistic=Statistic.QUANTILE, column="cost", quantile=Fraction(1, 2), group_by="region"),
    QuerySpec(statistic=Statistic.QUANTILE, column="n", quantile=Fraction(9, 10)),
)

costs = st.one_of(st.floats(min_value=-50, max_value=150, allow_nan=False), st.sampled_from([0.0, 100.0, 2.5, 50.5]),
                  st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.none())
rows = st.lists(st.tuples(
    st.one_of(st.integers(0, 6), st.none()),  # few units: most go over k = 2
    st.one_of(st.sampled_from(["a", "b", "c", "zz"]), st.none()),
    costs,
    st.one_of(st.integers(-5, 15), st.none()),
), min_size=0, max_size=60)


def _frame(data: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame({
        "rid": list(range(len(data))),
        "pid": [r[0] for r in data],
        "region": [r[1] for r in data],
        "cost": [r[2] for r in data],
        "n": [r[3] for r in data],
    }, schema={"rid": pl.Int64, "pid": pl.Int64, "region": pl.String, "cost": pl.Float64, "n": pl.Int64})


@pytest.fixture(scope="module")
def spark():
    if shutil.which("java") is None:
        pytest.skip("no Java runtime: Spark needs Java 17+")
    pytest.importorskip("pyspark")
    from yumen.connectors._source_spark import spark_session

    return spark_session(SourceSpec(kind="spark", format="parquet", path="/unused",
                                    spark_conf=(("spark.sql.shuffle.partitions", "4"),), master="local[2]"))


def _all(engine, plan):
    if plan.spec.statistic is Statistic.QUANTILE:
        return engine.candidate_counts(REG, plan)
    return engine.aggregate(REG, [plan])


def _compare(df: pl.DataFrame, postgres_dsn: str, tmp_path, monkeypatch) -> dict[str, list]:
    table = f"pushdown_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("YUMEN_TEST_PUSHDOWN_DSN", postgres_dsn)
    write_postgres_table(df, postgres_dsn, table, primary_key="rid")
    parquet = tmp_path / f"{table}.parquet"
    df.write_parquet(parquet)
    pg = open_source(SourceSpec(kind="postgres", table=table, dsn_env="YUMEN_TEST_PUSHDOWN_DSN", pushdown=True))
    sp = open_source(SourceSpec(kind="spark", format="parquet", path=str(parquet), order_by=("rid",),
                                master="local[2]", pushdown=True))
    try:
        polars = PolarsEngine(bound_contributions(pg.scan(), REG).frame.lazy())
        out: dict[str, list] = {"polars": [], "postgres": [], "spark": []}
        with pg.pushdown_engine() as pe, sp.pushdown_engine() as se:
            for spec in QUERIES:
                plan = make_plan(REG, spec, Fraction(1))
                out["polars"].append(_all(polars, plan))
                out["postgres"].append(_all(pe, plan))
                out["spark"].append(_all(se, plan))
        return out
    finally:
        import psycopg

        with psycopg.connect(postgres_dsn, autocommit=True) as db:
            db.execute(f'DROP TABLE IF EXISTS "{table}"')


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=rows)
def test_polars_postgres_and_spark_give_identical_exact_aggregates(data, postgres_dsn, spark, tmp_path, monkeypatch):
    out = _compare(_frame(data), postgres_dsn, tmp_path, monkeypatch)
    for i, spec in enumerate(QUERIES):
        assert out["postgres"][i] == out["polars"][i], (spec, out["polars"][i], out["postgres"][i])
        assert out["spark"][i] == out["polars"][i], (spec, out["polars"][i], out["spark"][i])


def test_the_contract_is_not_vacuous_truncation_clamping_and_nulls_change_the_answers(postgres_dsn, spark, tmp_path,
                                                                                      monkeypatch):
    # unit 1 has 4 rows (k = 2 keeps rids 0 and 1), a null unit, an out-of-bound, NaN and null value
    data = [(1, "a", 10.0, 1), (1, "a", 20.0, 2), (1, "a", 1000.0, 3), (1, "b", 30.0, 4),
            (None, "a", 40.0, 5), (2, "zz", -7.0, 6), (2, None, math.nan, 7), (3, "c", None, None)]
    out = _compare(_frame(data), postgres_dsn, tmp_path, monkeypatch)
    count, count_cost, _, total = (out["postgres"][i][0]["count"] if i != 3 else out["postgres"][i][0]["sum"]
                                   for i in range(4))
    assert count == [5]  # 8 rows - 1 without a unit - unit 1's 2 rows beyond its first two
    assert count_cost == [3]  # of rids 0, 1, 5, 6, 7: NaN and null count for nothing
    grid = make_plan(REG, QUERIES[3], Fraction(1)).grid
    assert total == [round((10 + 20 + 0 + 0) / grid.step)]  # -7 clamps to 0; unit 1's 1000 and 30 were cut
    assert out["polars"] == out["postgres"] == out["spark"]


def test_spark_pull_path_reads_rows_in_the_same_order_as_pushdown_truncates(spark, tmp_path):
    df = _frame([(1, "a", 5.0, 1), (1, "b", 6.0, 2), (1, "c", 7.0, 3)]).reverse()  # file order is not rid order
    path = tmp_path / "rev.parquet"
    df.write_parquet(path)
    sp = open_source(SourceSpec(kind="spark", format="parquet", path=str(path), order_by=("rid",), master="local[2]"))
    pulled = sp.scan().collect()
    assert pulled["rid"].to_list() == [0, 1, 2]
    plan = make_plan(REG, QUERIES[2], Fraction(1))
    with sp.pushdown_engine() as se:
        assert se.aggregate(REG, [plan]) == PolarsEngine(bound_contributions(sp.scan(), REG).frame.lazy()).aggregate(REG, [plan])
        assert se.aggregate(REG, [plan])[0]["count"] == [1, 1, 0]  # rids 0 and 1: regions a and b
