"""The extended query record the privacy layer executes, and its validation against a registration.

``yumen.jobs.Query`` carries count/sum/mean with an optional group-by; ``QuerySpec`` adds
variance, histograms and row filters. ``QuerySpec.from_query`` lifts a ``Query``. Nothing in
a spec carries bounds or categories: those come from the registration only.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from fractions import Fraction
from typing import Any

from yumen.catalog import Column, ColumnType, DatasetRegistration
from yumen.errors import Code, YumenError, echo
from yumen.jobs import Query

MAX_BINS = 1000
MAX_QUANTILE_DENOMINATOR = 1000
MAX_FILTERS = 16


def _bad(what: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, what, hint=hint)


class Statistic(enum.Enum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    VARIANCE = "variance"
    HISTOGRAM = "histogram"
    QUANTILE = "quantile"


class FilterOp(enum.Enum):
    EQ = "=="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"


_NUMERIC_OPS = {FilterOp.EQ, FilterOp.NE, FilterOp.LT, FilterOp.LE, FilterOp.GT, FilterOp.GE}
_CATEGORY_OPS = {FilterOp.EQ, FilterOp.NE, FilterOp.IN}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Filter:
    """Keep rows where ``column op value``. Numeric columns compare with a number; category
    columns with declared categories (``in`` takes a tuple of them)."""

    column: str
    op: FilterOp
    value: float | str | tuple[str, ...]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", self.column):
            raise _bad(f"filter column {echo(self.column)} is not a plain identifier")
        if self.op is FilterOp.IN:
            if not (isinstance(self.value, tuple) and self.value and all(isinstance(v, str) for v in self.value)):
                raise _bad("an 'in' filter takes a non-empty tuple of category names")
        elif isinstance(self.value, (int, float)) and not isinstance(self.value, bool):
            if not math.isfinite(self.value):
                raise _bad(f"filter on {echo(self.column)}: the value must be finite")
        elif not isinstance(self.value, str):
            raise _bad(f"filter on {echo(self.column)}: the value must be a number or a category name")

    def to_dict(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"column": self.column, "op": self.op.value, "value": value}


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuerySpec:
    """A declarative DP aggregate.

    ``statistic`` count (``column`` optional: counts rows where it is present), sum, mean,
    variance (``column`` numeric), histogram (``column`` a category column, or a numeric
    column cut into ``bins`` equal-width bins over its registered bounds), quantile (``column``
    numeric, ``quantile`` an exact fraction in (0, 1) such as ``Fraction("0.5")``, denominator
    at most 1000). ``group_by`` names a declared category column (not with histogram).
    ``filters`` are applied row by row.
    """

    statistic: Statistic
    column: str = ""
    group_by: str = ""
    filters: tuple[Filter, ...] = ()
    bins: int = 0
    quantile: Fraction | None = None

    def __post_init__(self) -> None:
        if self.statistic is Statistic.QUANTILE:
            q = self.quantile
            if isinstance(q, bool) or not isinstance(q, (Fraction, int)) or not 0 < q < 1:
                raise _bad("a quantile query needs quantile as an exact Fraction in (0, 1)", 'e.g. Fraction("0.5")')
            if Fraction(q).denominator > MAX_QUANTILE_DENOMINATOR:
                raise _bad(f"the quantile's denominator must be at most {MAX_QUANTILE_DENOMINATOR}", "use up to 3 decimals")
        elif self.quantile is not None:
            raise _bad("quantile only applies to a quantile query")
        needs_column = (Statistic.SUM, Statistic.MEAN, Statistic.VARIANCE, Statistic.HISTOGRAM, Statistic.QUANTILE)
        if self.statistic in needs_column and not self.column:
            raise _bad(f"a {self.statistic.value} query needs a column", "name a declared column")
        if self.statistic is Statistic.HISTOGRAM and self.group_by:
            raise _bad("a histogram is already grouped by its column; drop group_by")
        if self.bins and self.statistic is not Statistic.HISTOGRAM:
            raise _bad("bins only apply to a histogram")
        if not 0 <= self.bins <= MAX_BINS:
            raise _bad(f"bins must be between 1 and {MAX_BINS}")
        if len(self.filters) > MAX_FILTERS:
            raise _bad(f"at most {MAX_FILTERS} filters")
        if not isinstance(self.filters, tuple):
            raise _bad("filters must be a tuple")

    @classmethod
    def from_query(cls, query: Query) -> "QuerySpec":
        """The job record's query (``yumen.jobs.Query``) as a spec, filters and all."""
        filters = []
        for f in query.filters:
            try:
                op = FilterOp(f.op)
            except ValueError:
                raise _bad(f"filter operator {echo(f.op)} is unknown") from None
            filters.append(Filter(column=f.column, op=op, value=f.value))
        return cls(statistic=Statistic(query.aggregate.value), column=query.column, group_by=query.group_by,
                   filters=tuple(filters), bins=query.bins, quantile=query.quantile)

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": self.statistic.value,
            "column": self.column,
            "group_by": self.group_by,
            "filters": [f.to_dict() for f in self.filters],
            "bins": self.bins,
            "quantile": None if self.quantile is None else f"{self.quantile.numerator}/{self.quantile.denominator}",
        }


def as_spec(query: Query | QuerySpec) -> QuerySpec:
    if isinstance(query, QuerySpec):
        return query
    if isinstance(query, Query):
        return QuerySpec.from_query(query)
    raise _bad(f"expected a Query or QuerySpec, got {type(query).__name__}")


def _category(registration: DatasetRegistration, name: str, role: str) -> Column:
    col = registration.column(name)
    if col.type is not ColumnType.CATEGORY:
        raise _bad(
            f"{role} column {echo(name)} is {col.type.value}, not a declared category column",
            "group and histogram only by category columns, whose values are public",
        )
    return col


def validate(registration: DatasetRegistration, spec: QuerySpec) -> None:
    """Refuse anything the registration does not declare; raise with a hint the operator can act on."""
    unit = registration.privacy_unit.column
    for name in (spec.column, spec.group_by, *(f.column for f in spec.filters)):
        if name and name == unit:
            raise _bad(f"column {echo(name)} identifies the privacy unit; it cannot be aggregated, grouped or filtered on")
    if spec.group_by:
        _category(registration, spec.group_by, "group_by")
    if spec.column:
        col = registration.column(spec.column)
        if spec.statistic in (Statistic.SUM, Statistic.MEAN, Statistic.VARIANCE, Statistic.QUANTILE) and not col.numeric:
            raise _bad(f"{spec.statistic.value} needs a numeric column; {echo(spec.column)} is {col.type.value}")
        if spec.statistic is Statistic.HISTOGRAM:
            if col.type is ColumnType.CATEGORY and spec.bins:
                raise _bad("a category histogram has one bin per declared category; drop bins")
            if col.numeric and not spec.bins:
                raise _bad("a numeric histogram needs bins", "pass bins=10, say")
            if not (col.numeric or col.type is ColumnType.CATEGORY):
                raise _bad(f"histogram needs a category or numeric column; {echo(spec.column)} is {col.type.value}")
    for f in spec.filters:
        col = registration.column(f.column)
        if col.numeric:
            if f.op not in _NUMERIC_OPS or not isinstance(f.value, (int, float)) or isinstance(f.value, bool):
                raise _bad(f"filter on numeric column {echo(f.column)} compares with a number using ==, !=, <, <=, >, >=")
        elif col.type is ColumnType.CATEGORY:
            if f.op not in _CATEGORY_OPS:
                raise _bad(f"filter on category column {echo(f.column)} uses ==, != or in")
            values = f.value if isinstance(f.value, tuple) else (f.value,)
            undeclared = [v for v in values if not isinstance(v, str) or v not in col.categories]
            if undeclared:
                raise _bad(
                    f"filter on {echo(f.column)} names undeclared categories",
                    f"declared: {', '.join(col.categories)}",
                )
        else:
            raise _bad(
                f"cannot filter on {col.type.value} column {echo(f.column)}",
                "filter on numeric or category columns; identifiers and free text are never filtered on",
            )
