"""Planning a DP query without touching data: integer grid, components, calibrated noise."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

from yumen.catalog import Column, ColumnType, DatasetRegistration
from yumen.errors import Code, YumenError

from ._mechanisms import GEOMETRIC, Calibrated, calibrate, split_epsilon
from ._record import UNGROUPED, Component
from ._spec import QuerySpec, Statistic, validate

GRID_BITS = 30  # per-row contributions are integers of magnitude <= 2^30 (squares: 2^31)


def _bad(what: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, what, hint=hint)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Grid:
    lower: float
    upper: float
    step: Fraction  # a power of two
    q_lo: int
    q_hi: int

    @property
    def q_mid(self) -> int:
        return (self.q_lo + self.q_hi) // 2

    @property
    def centered_bound(self) -> int:
        return max(self.q_hi - self.q_mid, self.q_mid - self.q_lo)

    @property
    def square_shift(self) -> int:
        return max(0, (self.centered_bound**2).bit_length() - (GRID_BITS + 1))

    @property
    def square_bound(self) -> int:
        return self.centered_bound**2 >> self.square_shift


def _grid(col: Column) -> _Grid:
    lower, upper = float(col.lower), float(col.upper)  # type: ignore[arg-type]
    if col.type is ColumnType.INT:
        lower, upper = float(math.ceil(lower)), float(math.floor(upper))
        if lower >= upper:
            raise _bad(f"integer column {col.name!r} has no two integers within its bounds")
    m = max(abs(Fraction(lower)), abs(Fraction(upper)))
    e = math.ceil(math.log2(m)) if m > 0 else 0
    while Fraction(2) ** e < m:  # guard log2 rounding
        e += 1
    shift = e - GRID_BITS
    if col.type is ColumnType.INT:
        shift = max(0, shift)
    step = Fraction(2) ** shift
    q_lo = math.floor(Fraction(lower) / step)
    q_hi = math.ceil(Fraction(upper) / step)
    return _Grid(lower=lower, upper=upper, step=step, q_lo=q_lo, q_hi=q_hi)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Part:
    name: str
    bound: int  # per-row |contribution| in grid units
    unit: Fraction  # value units per grid unit


def _parts(spec: QuerySpec, grid: _Grid | None) -> tuple[_Part, ...]:
    count = _Part(name="count", bound=1, unit=Fraction(1))
    if spec.statistic in (Statistic.COUNT, Statistic.HISTOGRAM):
        return (count,)
    if grid is None:
        raise YumenError(Code.INTERNAL, "a numeric statistic was planned without a grid")
    if spec.statistic is Statistic.SUM:
        return (_Part(name="sum", bound=max(abs(grid.q_lo), abs(grid.q_hi)), unit=grid.step),)
    centered = _Part(name="centered_sum", bound=grid.centered_bound, unit=grid.step)
    if spec.statistic is Statistic.MEAN:
        return (count, centered)
    squares = _Part(
        name="centered_square_sum", bound=grid.square_bound, unit=grid.step**2 * 2**grid.square_shift
    )
    return (count, centered, squares)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Plan:
    spec: QuerySpec
    keys: tuple[str, ...]  # public key set; (UNGROUPED,) when ungrouped
    grid: _Grid | None
    parts: tuple[_Part, ...]
    calibrations: tuple[Calibrated, ...]
    k: int

    @property
    def epsilon(self) -> Fraction:
        return sum((c.epsilon for c in self.calibrations), Fraction(0))

    def components(self) -> tuple[Component, ...]:
        return tuple(
            Component(
                name=p.name,
                mechanism=c.mechanism,
                sensitivity=float(c.sensitivity * p.unit),
                scale=float(c.scale * p.unit),
                epsilon=c.epsilon,
            )
            for p, c in zip(self.parts, self.calibrations)
        )


def _need_grid(plan: _Plan) -> _Grid:
    if plan.grid is None:
        raise YumenError(Code.INTERNAL, "a numeric statistic was planned without a grid")
    return plan.grid


def _bin_labels(grid_col: Column, bins: int) -> tuple[str, ...]:
    lo, hi = Fraction(grid_col.lower), Fraction(grid_col.upper)  # type: ignore[arg-type]
    edges = [float(lo + (hi - lo) * i / bins) for i in range(bins + 1)]
    labels = [f"[{edges[i]:g},{edges[i + 1]:g})" for i in range(bins)]
    labels[-1] = labels[-1][:-1] + "]"
    if len(set(labels)) != bins:
        labels = [f"bin{i}:{lab}" for i, lab in enumerate(labels)]
    return tuple(labels)


def _plan(registration: DatasetRegistration, spec: QuerySpec, epsilon: Fraction) -> _Plan:
    validate(registration, spec)
    k = registration.privacy_unit.max_contributions
    grid = None
    keys: tuple[str, ...] = (UNGROUPED,)
    if spec.group_by:
        keys = registration.column(spec.group_by).categories
    if spec.statistic is Statistic.HISTOGRAM:
        col = registration.column(spec.column)
        keys = col.categories if col.type is ColumnType.CATEGORY else _bin_labels(col, spec.bins)
    elif spec.statistic in (Statistic.SUM, Statistic.MEAN, Statistic.VARIANCE):
        grid = _grid(registration.column(spec.column))
    parts = _parts(spec, grid)
    eps_each = split_epsilon(epsilon, len(parts))
    calibrations = tuple(calibrate(GEOMETRIC, k * p.bound, eps_each) for p in parts)
    return _Plan(spec=spec, keys=keys, grid=grid, parts=parts, calibrations=calibrations, k=k)
