"""Queries where the data lives: one DP query's exact aggregates compiled for the source's engine.

The connector plans a query as always (``yumen.privacy``: registration bounds, power-of-two
grid, public keys, calibrated OpenDP noise), but instead of pulling rows into Polars it
sends one statement per aggregation pass to the department's engine and gets back one row
per group: integer counts and sums, never a raw row. The noise is then added at the
connector from the plan, exactly as for the Polars path (``yumen.privacy.AggregateEngine``).

What the engines compute, each step the same rule as ``privacy/_bounding.py`` and
``privacy/_aggregate.py`` (the contract suite, tests/unit/connectors/test_pushdown_contract.py,
holds Polars, PostgreSQL and Spark to identical aggregates):

1. **Stability.** Rows whose privacy-unit id is null (or NaN) are dropped; each unit keeps its
   first ``k`` rows *in the source's order*: ``row_number() OVER (PARTITION BY unit ORDER BY
   <source order>) <= k``. The source order is the one its snapshot is written in (PostgreSQL:
   primary key, else every column with text in ``COLLATE "C"``, after any ``order_by``;
   Spark: ``order_by`` then every column, ascending, nulls last), so the Polars path on a
   snapshot, which keeps "the first k rows in frame order", keeps the same rows. Rows that
   tie on every column are identical, so which of them is kept cannot change an aggregate.
   With no unit column each row is its own unit and nothing is cut.
2. **Filters** after truncation (as in Polars): numeric columns compared as float8 with NaN
   as null, category columns as text; null never matches.
3. **Clamping** to the registered bounds on the grid: ``round(clamp(x * 2^-s))`` as an
   integer, rounding half to even in every engine (PostgreSQL's ``round(float8)``, Spark's
   ``bround``, Polars' ``round``); NaN and null count for nothing.
4. **Public keys.** Grouped by the raw column; the connector maps results to the declared
   categories and drops the rest (undeclared values and null never appear; declared groups
   with no rows get zeros). Numeric histogram bins and quantile candidates are computed with
   the same floating-point operations in the same order as Polars.
5. **Exact integer sums** (count, sum, centered sum, centered square sum): the engine's order
   of summation cannot change them.

Every value that comes from a query (filter values) is a bound parameter; every identifier
is quoted by the engine's own quoting (``psycopg.sql.Identifier``, Spark column objects),
and only identifiers of the registration reach a statement (``yumen.privacy`` validates a
query's columns against it first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from yumen.catalog import ColumnType, DatasetRegistration
from yumen.errors import Code, YumenError
from yumen.privacy import MAX_ROWS, FilterOp, Plan, Statistic, grouping

__all__ = ["Pass", "Component", "KeySpec", "describe_pass", "describe_quantile", "assemble", "needed_columns"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Component:
    """One aggregate of a pass: ``kind`` count|sum|centered_sum|centered_square_sum over a
    quantized column, or count_rows (all rows) / count_present (a column's non-missing rows)."""

    alias: str
    kind: str
    column: str = ""
    numeric: bool = False
    inv: float = 1.0  # 2^-s: scaling is exact
    lo: float = 0.0  # clamp bounds, already scaled
    hi: float = 0.0
    mid: int = 0
    shift: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeySpec:
    """``label`` (a category column), ``bin`` (a numeric histogram) or ``none`` (ungrouped)."""

    kind: str
    column: str = ""
    lo: float = 0.0
    hi: float = 0.0
    width: float = 1.0  # hi - lo, computed once in Python as Polars does
    bins: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pass:
    key: KeySpec
    components: tuple[Component, ...]
    filters: tuple[Any, ...]  # privacy.Filter
    wanted: tuple[dict[str, str], ...]  # per plan: part name -> alias


def _quantized(alias: str, part: str, column: str, plan: Plan) -> Component:
    g = plan.grid
    if g is None:
        raise YumenError(Code.INTERNAL, "a numeric statistic was planned without a grid")
    inv = float(1 / g.step)
    return Component(alias=alias, kind=part, column=column, numeric=True, inv=inv, lo=g.lower * inv,
                     hi=g.upper * inv, mid=g.q_mid, shift=g.square_shift)


def key_spec(registration: DatasetRegistration, plan: Plan) -> KeySpec:
    spec = plan.spec
    if spec.group_by:
        return KeySpec(kind="label", column=spec.group_by)
    if spec.statistic is Statistic.HISTOGRAM:
        col = registration.column(spec.column)
        if col.type is ColumnType.CATEGORY:
            return KeySpec(kind="label", column=spec.column)
        lo, hi = float(col.lower), float(col.upper)  # type: ignore[arg-type]
        return KeySpec(kind="bin", column=spec.column, lo=lo, hi=hi, width=hi - lo, bins=spec.bins)
    return KeySpec(kind="none")


def describe_pass(registration: DatasetRegistration, plans: Sequence[Plan]) -> Pass:
    """The aggregates of ``plans`` (one shared grouping) as one pass, sharing equal components."""
    if not plans or len({grouping(p) for p in plans}) != 1:
        raise YumenError(Code.INTERNAL, "a pushdown pass needs plans with one shared grouping")
    components: dict[str, Component] = {}
    wanted = []
    for plan in plans:
        spec = plan.spec
        names: dict[str, str] = {}
        if plan.grid is not None:
            for part in ("count", *(p.name for p in plan.parts)):
                alias = f"{part}:{spec.column}"
                components.setdefault(alias, _quantized(alias, part, spec.column, plan))
                names[part] = alias
        elif spec.column and spec.statistic is Statistic.COUNT:
            alias = f"count:{spec.column}"
            components.setdefault(alias, Component(alias=alias, kind="count_present", column=spec.column,
                                                   numeric=registration.column(spec.column).numeric))
            names["count"] = alias
        else:
            components.setdefault("count:", Component(alias="count:", kind="count_rows"))
            names["count"] = "count:"
        wanted.append(names)
    return Pass(key=key_spec(registration, plans[0]), components=tuple(components.values()),
                filters=plans[0].spec.filters, wanted=tuple(wanted))


def describe_quantile(registration: DatasetRegistration, plan: Plan) -> tuple[KeySpec, float, float, int]:
    """(key, lowest candidate, highest candidate, last index) of a quantile plan."""
    cands = plan.candidates
    if plan.spec.statistic is not Statistic.QUANTILE or len(cands) < 2:
        raise YumenError(Code.INTERNAL, "candidate counts need a quantile plan")
    key = KeySpec(kind="label", column=plan.spec.group_by) if plan.spec.group_by else KeySpec(kind="none")
    return key, cands[0], cands[-1], len(cands) - 1


def needed_columns(registration: DatasetRegistration, plans: Sequence[Plan]) -> list[str]:
    """Every column a statement reads (the unit's, and the plans'), each a declared column."""
    names = {registration.privacy_unit.column} if registration.privacy_unit.column else set()
    for p in plans:
        names |= {c for c in (p.spec.column, p.spec.group_by, *(f.column for f in p.spec.filters)) if c}
    for n in names - {registration.privacy_unit.column}:
        registration.column(n)  # raises for an undeclared column
    return sorted(names)


def check_present(registration: DatasetRegistration, have: Sequence[str], names: Sequence[str]) -> None:
    missing = [n for n in names if n and n not in have]
    if missing:
        raise YumenError(Code.JOB_FAILED,
                         f"dataset {registration.id!r}: the data source has no column(s) {', '.join(missing)}",
                         hint="the registration and the data source disagree; the department must fix its registration")


def assemble(registration: DatasetRegistration, plans: Sequence[Plan], p: Pass,
             rows: Sequence[Sequence[Any]]) -> list[dict[str, list[int]]]:
    """Turn the engine's ``(key, aggregate...)`` rows into per-plan vectors in public-key order.

    Undeclared labels, null keys and out-of-range bins are dropped here, inside the connector.
    """
    keys = plans[0].keys
    aliases = [c.alias for c in p.components]
    columns = {a: [0] * len(keys) for a in aliases}
    if p.key.kind == "none":
        for row in rows:
            for a, v in zip(aliases, row[1:]):
                columns[a][0] += int(v or 0)
    else:
        index = {label: i for i, label in enumerate(keys)}
        for row in rows:
            g = row[0]
            if g is None:
                continue
            pos = index.get(str(g)) if p.key.kind == "label" else int(g)
            if pos is None or not 0 <= pos < len(keys):
                continue
            for a, v in zip(aliases, row[1:]):
                columns[a][pos] += int(v or 0)
    results = []
    for names in p.wanted:
        result = {part: columns[alias] for part, alias in names.items()}
        if sum(result["count"]) > MAX_ROWS:
            raise YumenError(Code.JOB_FAILED, f"the query covers more than {MAX_ROWS} rows, beyond the exact-sum limit",
                             hint="split the dataset or add filters")
        results.append(result)
    return results


def assemble_candidates(plan: Plan, key: KeySpec, rows: Sequence[Sequence[Any]]) -> list[list[int]]:
    counts = [[0] * len(plan.candidates) for _ in plan.keys]
    index = {label: i for i, label in enumerate(plan.keys)}
    for g, c, n in rows:
        pos = 0 if key.kind == "none" else (index.get(str(g)) if g is not None else None)
        if pos is not None and c is not None:
            counts[pos][int(c)] += int(n)
    if sum(map(sum, counts)) > MAX_ROWS:
        raise YumenError(Code.JOB_FAILED, f"the query covers more than {MAX_ROWS} rows", hint="add filters")
    return counts


NUMERIC_OPS = {FilterOp.EQ: "=", FilterOp.NE: "<>", FilterOp.LT: "<", FilterOp.LE: "<=", FilterOp.GT: ">",
               FilterOp.GE: ">="}
