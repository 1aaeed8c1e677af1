"""Apache Spark pushdown: a DP query's bounded exact aggregates as one Spark plan per pass.

The same steps as ``_pushdown`` describes, with the DataFrame API (so every identifier is a
column object and every value a literal, never text pasted into SQL): ``row_number()`` over
a window partitioned by the unit and ordered by the source's order, the filters, clamping
with ``bround`` (half to even), a ``groupBy`` on the raw key and integer sums. Spark runs it
wherever ``spark.master`` points; only one row per group comes back to the connector.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError
from yumen.privacy import Plan

from ._pushdown import (
    Component,
    KeySpec,
    assemble,
    assemble_candidates,
    check_present,
    describe_pass,
    describe_quantile,
    needed_columns,
)

__all__ = ["SparkEngine"]

log = logging.getLogger(__name__)


class SparkEngine:
    """Aggregates computed by Spark on a source's DataFrame."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.df = source.frame()
        self.jobs = 0

    def _bounded(self, registration: DatasetRegistration, columns: list[str]) -> Any:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        df = self.df
        check_present(registration, list(df.columns), columns)
        unit = registration.privacy_unit.column
        if not unit:
            return df.select(*columns)
        u = F.col(unit)
        present = u.isNotNull()
        if dict(df.dtypes)[unit] in ("double", "float"):
            present = present & ~F.isnan(u)
        window = Window.partitionBy(u).orderBy(*self.source.order(df))
        k = registration.privacy_unit.max_contributions
        return (df.where(present).withColumn("__rn", F.row_number().over(window))
                .where(F.col("__rn") <= F.lit(k)).select(*columns))

    @staticmethod
    def _value(name: str) -> Any:
        from pyspark.sql import functions as F

        return F.nanvl(F.col(name).cast("double"), F.lit(None).cast("double"))

    def _filtered(self, registration: DatasetRegistration, df: Any, filters: tuple[Any, ...]) -> Any:
        from pyspark.sql import functions as F

        from yumen.privacy import FilterOp

        for f in filters:
            col = registration.column(f.column)
            if col.numeric:
                x, v = self._value(f.column), F.lit(float(f.value)).cast("double")
                cond = {FilterOp.EQ: x == v, FilterOp.NE: x != v, FilterOp.LT: x < v, FilterOp.LE: x <= v,
                        FilterOp.GT: x > v, FilterOp.GE: x >= v}[f.op]
            else:
                s = F.col(f.column).cast("string")
                if f.op is FilterOp.IN:
                    cond = s.isin([str(v) for v in f.value])
                elif f.op is FilterOp.EQ:
                    cond = s == F.lit(str(f.value))
                else:
                    cond = s != F.lit(str(f.value))
            df = df.where(F.coalesce(cond, F.lit(False)))
        return df

    def _key(self, key: KeySpec) -> Any:
        from pyspark.sql import functions as F

        if key.kind == "none":
            return F.lit(None).cast("string")
        if key.kind == "label":
            return F.col(key.column).cast("string")
        x = self._value(key.column)
        clipped = F.least(F.greatest(x, F.lit(key.lo)), F.lit(key.hi))
        idx = F.floor((clipped - F.lit(key.lo)) / F.lit(key.width) * F.lit(float(key.bins)))
        idx = F.least(F.greatest(idx, F.lit(0)), F.lit(key.bins - 1)).cast("long")
        return F.when(x.isNull(), F.lit(None).cast("long")).otherwise(idx)

    def _component(self, c: Component) -> tuple[Any, Any]:
        """(per-row expression, aggregate over the column it is stored as)."""
        from pyspark.sql import functions as F

        if c.kind == "count_rows":
            return F.lit(1), lambda n: F.count(F.lit(1))
        if c.kind == "count_present":
            expr = self._value(c.column) if c.numeric else F.col(c.column)
            return expr, lambda n: F.count(F.col(n))
        x = self._value(c.column)
        q = F.bround(F.least(F.greatest(x * F.lit(c.inv), F.lit(c.lo)), F.lit(c.hi)), 0).cast("long")
        expr = F.when(x.isNull(), F.lit(None).cast("long")).otherwise(q)
        mid = F.lit(c.mid).cast("long")
        if c.kind == "count":
            return expr, lambda n: F.count(F.col(n))
        if c.kind == "sum":
            return expr, lambda n: F.sum(F.col(n))
        if c.kind == "centered_sum":
            return expr, lambda n: F.sum(F.col(n) - mid)
        if c.kind == "centered_square_sum":
            # floor division by 2^shift of a non-negative integer is a right shift
            return expr, lambda n: F.sum(F.shiftright((F.col(n) - mid) * (F.col(n) - mid), c.shift))
        raise YumenError(Code.INTERNAL, f"unknown aggregate component {c.kind!r}")

    def _collect(self, df: Any) -> list[tuple[Any, ...]]:
        self.jobs += 1
        try:
            return [tuple(r) for r in df.collect()]
        except Exception as exc:  # noqa: BLE001 - Spark's message may quote data: department's log only
            log.warning("pushdown on %s failed: %s", self.source.spec.describe(), exc)
            raise YumenError(Code.JOB_FAILED, f"{self.source.spec.describe()}: the pushed-down query failed "
                             f"({type(exc).__name__})", hint="the department's log has Spark's message") from None

    # -- AggregateEngine ----------------------------------------------------------------
    def aggregate(self, registration: DatasetRegistration, plans: list[Plan]) -> list[dict[str, list[int]]]:

        p = describe_pass(registration, plans)
        df = self._filtered(registration, self._bounded(registration, needed_columns(registration, plans)), p.filters)
        rows, aggs = [self._key(p.key).alias("__g")], []
        for i, c in enumerate(p.components):
            expr, agg = self._component(c)
            rows.append(expr.alias(f"__v{i}"))
            aggs.append(agg(f"__v{i}").alias(f"__a{i}"))
        out = df.select(*rows).groupBy("__g").agg(*aggs)
        return assemble(registration, plans, p, self._collect(out))

    def candidate_counts(self, registration: DatasetRegistration, plan: Plan) -> list[list[int]]:
        from pyspark.sql import functions as F

        key, lo, hi, last = describe_quantile(registration, plan)
        df = self._filtered(registration, self._bounded(registration, needed_columns(registration, [plan])),
                            plan.spec.filters)
        x = self._value(plan.spec.column)
        clipped = F.least(F.greatest(x, F.lit(lo)), F.lit(hi))
        idx = F.bround((clipped - F.lit(lo)) / F.lit(hi - lo) * F.lit(float(last)), 0)
        idx = F.least(F.greatest(idx, F.lit(0.0)), F.lit(float(last))).cast("long")
        idx = F.when(x.isNull(), F.lit(None).cast("long")).otherwise(idx)
        out = df.select(self._key(key).alias("__g"), idx.alias("__c")).groupBy("__g", "__c").agg(F.count(F.lit(1)))
        return assemble_candidates(plan, key, self._collect(out))

    def fingerprint(self) -> str:
        """The dataset's content computed in Spark, as ``sha256:<hex>`` (row count and two
        order-independent sums of per-row hashes, with the schema); see the PostgreSQL one."""
        from pyspark.sql import functions as F

        cols = [F.col(c) for c in self.df.columns]
        row = self._collect(self.df.select(
            F.count(F.lit(1)),
            F.coalesce(F.sum(F.xxhash64(*cols).cast("decimal(38,0)")), F.lit(0)),
            F.coalesce(F.sum(F.hash(*cols).cast("decimal(38,0)")), F.lit(0)),
        ))[0]
        shape = ",".join(f"{n}:{t}" for n, t in self.df.dtypes)
        text = f"spark-rows|{self.source.spec.describe()}|{shape}|{row[0]}|{row[1]}|{row[2]}"
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
