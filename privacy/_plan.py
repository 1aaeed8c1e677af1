"""Planning a DP query without touching data: integer grid, components, calibrated noise."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

from yumen.catalog import Column, ColumnType, DatasetRegistration
from yumen.errors import Code, YumenError
from yumen.loss import Accounting

from ._mechanisms import DISCRETE_GAUSSIAN, GEOMETRIC, NOISY_MAX, PURE, ZCDP, Calibrated, calibrate, split_epsilon
from ._record import UNGROUPED, Component
from ._spec import QuerySpec, Statistic, validate

GRID_BITS = 30  # per-row contributions are integers of magnitude <= 2^30 (squares: 2^31)
QUANTILE_CANDIDATES = 1025  # 1024 equal steps over [L, U]


def _bad(what: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, what, hint=hint)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Grid:
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


def grid_for(col: Column) -> Grid:
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
    if not -900 <= shift <= 900:  # keep the step and its inverse normal floats
        raise _bad(
            f"column {col.name!r}: bounds [{col.lower}, {col.upper}] are out of the supported magnitude",
            "register bounds between about 1e-260 and 1e280 in magnitude",
        )
    step = Fraction(2) ** shift
    q_lo = math.floor(Fraction(lower) / step)
    q_hi = math.ceil(Fraction(upper) / step)
    return Grid(lower=lower, upper=upper, step=step, q_lo=q_lo, q_hi=q_hi)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Part:
    name: str
    bound: int  # per-row |contribution| in grid units
    unit: Fraction  # value units per grid unit


def parts_for(spec: QuerySpec, grid: Grid | None) -> tuple[Part, ...]:
    count = Part(name="count", bound=1, unit=Fraction(1))
    if spec.statistic is Statistic.QUANTILE:
        q = Fraction(spec.quantile)  # type: ignore[arg-type]
        # score_j = |(den - num) * #{x < c_j} - num * #{x > c_j}|: one row moves it by <= max(num, den - num)
        return (Part(name="quantile_score", bound=max(q.numerator, q.denominator - q.numerator), unit=Fraction(1)),)
    if spec.statistic in (Statistic.COUNT, Statistic.HISTOGRAM):
        return (count,)
    if grid is None:
        raise YumenError(Code.INTERNAL, "a numeric statistic was planned without a grid")
    if spec.statistic is Statistic.SUM:
        return (Part(name="sum", bound=max(abs(grid.q_lo), abs(grid.q_hi)), unit=grid.step),)
    centered = Part(name="centered_sum", bound=grid.centered_bound, unit=grid.step)
    if spec.statistic is Statistic.MEAN:
        return (count, centered)
    squares = Part(
        name="centered_square_sum", bound=grid.square_bound, unit=grid.step**2 * 2**grid.square_shift
    )
    return (count, centered, squares)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    spec: QuerySpec
    keys: tuple[str, ...]  # public key set; (UNGROUPED,) when ungrouped
    grid: Grid | None
    parts: tuple[Part, ...]
    calibrations: tuple[Calibrated, ...]
    k: int
    candidates: tuple[float, ...] = ()  # quantile: the public candidate values, ascending

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
                measure=c.measure,
            )
            for p, c in zip(self.parts, self.calibrations)
        )


def need_grid(plan: Plan) -> Grid:
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


def quantile_candidates(col: Column) -> tuple[float, ...]:
    """Public candidates for a quantile: every integer for a narrow integer column, else
    ``QUANTILE_CANDIDATES`` evenly spaced points over the registered bounds."""
    lower, upper = Fraction(col.lower), Fraction(col.upper)  # type: ignore[arg-type]
    if col.type is ColumnType.INT and math.floor(upper) - math.ceil(lower) < QUANTILE_CANDIDATES:
        return tuple(float(v) for v in range(math.ceil(lower), math.floor(upper) + 1))
    n = QUANTILE_CANDIDATES - 1
    return tuple(float(lower + (upper - lower) * i / n) for i in range(n + 1))


def make_plan(registration: DatasetRegistration, spec: QuerySpec, epsilon: Fraction) -> Plan:
    """Plan ``spec`` at a loss of ``epsilon`` in the registration's accounting (ε, or ρ under zCDP).

    Under zCDP the additive components use the discrete Gaussian at their L2 sensitivity. A
    unit's k rows spread over groups move the group vector by at most k times the per-row
    bound in L2 as in L1 (the L2 norm is largest when all k rows land in one group), so the
    sensitivities below serve both.
    """
    validate(registration, spec)
    k = registration.privacy_unit.max_contributions
    zcdp = registration.privacy_unit.accounting is Accounting.ZCDP
    measure, additive = (ZCDP, DISCRETE_GAUSSIAN) if zcdp else (PURE, GEOMETRIC)
    grid = None
    keys: tuple[str, ...] = (UNGROUPED,)
    if spec.group_by:
        keys = registration.column(spec.group_by).categories
    if spec.statistic is Statistic.HISTOGRAM:
        col = registration.column(spec.column)
        keys = col.categories if col.type is ColumnType.CATEGORY else _bin_labels(col, spec.bins)
    elif spec.statistic in (Statistic.SUM, Statistic.MEAN, Statistic.VARIANCE):
        grid = grid_for(registration.column(spec.column))
    parts = parts_for(spec, grid)
    eps_each = split_epsilon(epsilon, len(parts))
    if spec.statistic is Statistic.QUANTILE:
        # One selection per group, all with this measurement. A unit with k_g rows in group g
        # moves that group's scores by <= k_g * bound, and noisy max costs 2 d / scale, linear
        # in d; so the groups together cost at most 2 k bound / scale = map(k * bound) <= ε.
        # Under zCDP each group's ρ is (2 k_g bound / scale)² / 2, and the sum of squares of
        # the k_g is at most k²: again map(k * bound) <= ρ.
        cal = calibrate(NOISY_MAX, k * parts[0].bound, eps_each, measure=measure)
        candidates = quantile_candidates(registration.column(spec.column))
        return Plan(spec=spec, keys=keys, grid=None, parts=parts, calibrations=(cal,), k=k, candidates=candidates)
    calibrations = tuple(calibrate(additive, k * p.bound, eps_each, measure=measure) for p in parts)
    return Plan(spec=spec, keys=keys, grid=grid, parts=parts, calibrations=calibrations, k=k)
