"""The one pass over the data: exact integer aggregates per public group. Pre-noise values."""

from __future__ import annotations

import polars as pl

from yumen.catalog import ColumnType, DatasetRegistration
from yumen.errors import Code, YumenError

from ._plan import Plan
from ._spec import Filter, FilterOp, Statistic

MAX_ROWS = 2**32  # with per-row magnitude <= 2^31, Int64 sums cannot overflow below this


def _filter_expr(registration: DatasetRegistration, f: Filter) -> pl.Expr:
    col = registration.column(f.column)
    if col.numeric:
        x = pl.col(f.column).cast(pl.Float64, strict=False)
        v = float(f.value)  # type: ignore[arg-type]
        ops = {
            FilterOp.EQ: x == v,
            FilterOp.NE: x != v,
            FilterOp.LT: x < v,
            FilterOp.LE: x <= v,
            FilterOp.GT: x > v,
            FilterOp.GE: x >= v,
        }
        return ops[f.op]
    s = pl.col(f.column).cast(pl.String, strict=False)
    if f.op is FilterOp.IN:
        return s.is_in(list(f.value))  # type: ignore[arg-type]
    if f.op is FilterOp.EQ:
        return s == f.value
    return s != f.value


def _key_expr(registration: DatasetRegistration, plan: _Plan) -> tuple[pl.Expr, bool] | None:
    """The grouping expression, and whether its values are labels (True) or bin indices (False).

    Grouping is on the raw column, not on a cast to ``pl.Enum(declared)``: the cast costs a
    string lookup per row (3x a plain group-by on 10 M rows), while mapping the few result
    keys to the declared list afterwards is free. Aggregates of undeclared values are
    computed and discarded inside the connector, never released.
    """
    spec = plan.spec
    if spec.group_by:
        return pl.col(spec.group_by), True
    if spec.statistic is Statistic.HISTOGRAM:
        col = registration.column(spec.column)
        if col.type is ColumnType.CATEGORY:
            return pl.col(spec.column), True
        lo, hi = float(col.lower), float(col.upper)  # type: ignore[arg-type]
        x = pl.col(spec.column).cast(pl.Float64, strict=False).fill_nan(None)
        idx = ((x.clip(lo, hi) - lo) / (hi - lo) * spec.bins).floor().clip(0, spec.bins - 1)
        return idx.cast(pl.UInt32), False
    return None


def _aggregate(frame: pl.LazyFrame, registration: DatasetRegistration, plan: _Plan) -> dict[str, list[int]]:
    """Exact per-group integer aggregates of the bounded data, in key order. Pre-noise.

    One pass with Polars' streaming engine: on 10 M rows it computes count, sum and centered
    sum of the quantized column faster than the in-memory engine computes a plain
    ``group_by().agg(len, sum, mean)`` (integer sums are exact, so the engine's order of
    summation does not matter). Rows whose value is null or NaN (or not a number) count for
    nothing: they are left out of the count as well as the sums.
    """
    spec = plan.spec
    lf = frame
    if spec.filters:
        cond = pl.lit(True)
        for f in spec.filters:
            cond = cond & _filter_expr(registration, f)
        lf = lf.filter(cond.fill_null(False))

    counted: pl.Expr = pl.len()
    aggs: list[pl.Expr] = []
    g = plan.grid
    if g is not None:
        inv = float(1 / g.step)  # a power of two: scaling is exact
        x = pl.col(spec.column).cast(pl.Float64, strict=False).fill_nan(None)
        q = (x * inv).clip(g.lower * inv, g.upper * inv).round().cast(pl.Int64)
        lf = lf.with_columns(q.alias("__q"))
        q = pl.col("__q")
        counted = q.count()
        names = {p.name for p in plan.parts}
        if "sum" in names:
            aggs.append(q.sum().alias("sum"))
        if "centered_sum" in names:
            aggs.append((q - g.q_mid).sum().alias("centered_sum"))
        if "centered_square_sum" in names:
            c = q - g.q_mid
            aggs.append(((c * c) // (2**g.square_shift)).sum().alias("centered_square_sum"))
    elif spec.column and spec.statistic is Statistic.COUNT:
        col = registration.column(spec.column)
        if col.numeric:
            counted = pl.col(spec.column).cast(pl.Float64, strict=False).fill_nan(None).count()
        else:
            counted = pl.col(spec.column).count()
    aggs.insert(0, counted.cast(pl.Int64).alias("count"))

    key = _key_expr(registration, plan)
    names = ["count", *(a.meta.output_name() for a in aggs[1:])]
    if key is None:
        out = lf.select(aggs).collect(engine="streaming")
        result = {name: [int(out.get_column(name)[0] or 0)] for name in names}
    else:
        expr, labelled = key
        out = lf.group_by(expr.alias("__g")).agg(aggs).collect(engine="streaming")
        if labelled:
            index = {label: i for i, label in enumerate(plan.keys)}
            labels = out.get_column("__g").cast(pl.String, strict=False).to_list()
            positions = [index.get(label) if label is not None else None for label in labels]
        else:
            positions = out.get_column("__g").to_list()
        result = {name: [0] * len(plan.keys) for name in names}
        for name in names:
            vec = result[name]
            for i, v in zip(positions, out.get_column(name).to_list()):
                if i is not None:
                    vec[i] = int(v or 0)
    if sum(result["count"]) > MAX_ROWS:
        raise YumenError(
            Code.JOB_FAILED,
            f"the query covers more than {MAX_ROWS} rows, beyond the exact-sum limit",
            hint="split the dataset or add filters",
        )
    return result
