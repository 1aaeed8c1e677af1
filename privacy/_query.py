"""DP aggregate queries over a Polars LazyFrame, released through OpenDP measurements.

Runs inside the department's connector, next to raw data.

Pipeline (every step is ours except the noise, which is OpenDP's):

1. **Contribution bounding.** Each privacy unit (``registration.privacy_unit.column``) keeps
   its first ``k = max_contributions`` rows in frame order; with no unit column every row is
   its own unit (k = 1). Which k rows survive depends only on that unit's own rows, so adding
   or removing one unit adds or removes at most k rows and leaves every other row alone.
   Rows whose unit id is null are treated as one unit (conservative).
2. **Row filters**, declared columns only; a row-wise filter keeps the k-row bound.
3. **Public key set.** Group keys are the registration's declared categories, in declared
   order. Undeclared or null values are dropped; declared groups with no rows are released
   with noise. So *which* groups appear never depends on the data.
4. **Clamping and an integer grid.** Values are clamped to the registered ``[L, U]`` and
   rounded to a power-of-two grid (step 1 for integer columns with moderate bounds, else
   2^(e-30) with 2^e >= max(|L|, |U|)), so every per-row contribution is an integer of at most
   2^31 and every sum is exact in Int64 (up to ``MAX_ROWS`` = 2^32 rows). Float sums are never
   noised directly: a float sum's rounding error depends on the data and breaks the
   textbook sensitivity (Casacuberta et al., CCS 2022); integer sums have none.
5. **Sensitivities** in the add/remove-one-unit (unbounded) relation, in grid units,
   summed over all groups (a unit may spread its k rows over several groups; the L1 norm of
   its effect over the whole vector is still at most k times the per-row bound):

   =====================  ==========================================
   count                  k
   sum                    k * max(|q_L|, |q_U|)
   centered sum (mean)    k * max(q_U - q_mid, q_mid - q_L)
   centered square sum    k * floor(B^2 / 2^s)  (B the centered bound)
   =====================  ==========================================

   (In the bounded, swap-one-unit relation these would double; we release counts, so the
   relation must be unbounded.)
6. **Noise.** One OpenDP ``make_geometric`` (discrete Laplace) measurement per component over
   the whole group vector, scale = sensitivity / ε_i, certified by OpenDP's privacy map.
   ε is split evenly over the components (mean: count + centered sum; variance: count +
   centered sum + centered square sum) and composes sequentially; the ε spent is the exact
   sum of what OpenDP certifies. Quantiles instead select one of 1,025 public candidates
   per group with OpenDP's ``make_noisy_max`` (see ``_plan.make_plan`` and docs/privacy.md).
7. **Post-processing.** mean = mid + S'/C' (clamped to [L, U]); variance = S2'/C' - (S1'/C')^2
   (clamped to [0, ((U-L)/2)^2]). Counts are left signed and unclamped, so they stay
   unbiased when the broker adds several departments' counts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from fractions import Fraction
from typing import Any, Sequence

import polars as pl

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError
from yumen.jobs import Query

from ._aggregate import grouping
from ._bounding import BoundedFrame, check_columns, truncate
from ._engine import AggregateEngine, PolarsEngine
from ._mechanisms import CONFIDENCE, NOISY_MAX, check_epsilon
from ._plan import Grid, Plan, make_plan, need_grid
from ._record import Component, DPRelease
from ._spec import QuerySpec, Statistic, as_spec

logger = logging.getLogger(__name__)

ALPHA = 1 - float(CONFIDENCE)


def _bad(what: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, what, hint=hint)


def _release(plan: Plan, agg: dict[str, list[int]]) -> DPRelease:
    spec = plan.spec
    noisy = {p.name: [int(v) for v in c(agg[p.name])] for p, c in zip(plan.parts, plan.calibrations)}
    cal = {p.name: c for p, c in zip(plan.parts, plan.calibrations)}
    unit = {p.name: p.unit for p in plan.parts}
    values: dict[str, float] = {}
    exact: dict[str, float] = {}
    scale: dict[str, float] = {}
    accuracy: dict[str, float] = {}
    counts: dict[str, float] = {}
    n_parts = len(plan.parts)
    for i, key in enumerate(plan.keys):
        if spec.statistic in (Statistic.COUNT, Statistic.HISTOGRAM, Statistic.SUM):
            name = plan.parts[0].name
            u = unit[name]
            values[key] = float(noisy[name][i] * u)
            exact[key] = float(agg[name][i] * u)
            scale[key] = float(cal[name].scale * u)
            accuracy[key] = float(cal[name].half_width(ALPHA) * u)
            if spec.statistic is not Statistic.SUM:
                counts[key] = values[key]
            continue
        g = need_grid(plan)
        c_noisy = noisy["count"][i]
        c_exact = agg["count"][i]
        a_c = cal["count"].half_width(ALPHA / n_parts)
        a_s = cal["centered_sum"].half_width(ALPHA / n_parts)
        s_noisy = noisy["centered_sum"][i]
        s_exact = agg["centered_sum"][i]
        counts[key] = float(c_noisy)
        if spec.statistic is Statistic.MEAN:
            values[key], accuracy[key] = _mean(g, c_noisy, s_noisy, a_c, a_s)
            exact[key] = float((g.q_mid + (Fraction(s_exact, c_exact) if c_exact else 0)) * g.step)
            scale[key] = float(cal["centered_sum"].scale * g.step) / max(c_noisy, 1)
        else:
            a_2 = cal["centered_square_sum"].half_width(ALPHA / n_parts)
            q_noisy = noisy["centered_square_sum"][i]
            q_exact = agg["centered_square_sum"][i]
            values[key], accuracy[key] = _variance(g, c_noisy, s_noisy, q_noisy, a_c, a_s, a_2)
            exact[key] = float(_variance_of(g, c_exact, s_exact, q_exact))
            scale[key] = float(cal["centered_square_sum"].scale * unit["centered_square_sum"]) / max(c_noisy, 1)
    return DPRelease(
        values=values,
        noise_scale=scale,
        accuracy=accuracy,
        mechanism=plan.calibrations[0].mechanism,
        accounting=plan.calibrations[0].measure,
        epsilon=plan.epsilon,
        components=plan.components(),
        statistic=spec.statistic.value,
        exact=exact,
        counts=counts,
        count_accuracy=float(cal["count"].half_width(ALPHA)) if "count" in cal and counts else 0.0,
    )


def _quantile_scores(counts: list[int], q: Fraction) -> list[int]:
    """score_j = |(den - num) * #{x < c_j} - num * #{x > c_j}|, zero at an exact q-quantile."""
    num, den = q.numerator, q.denominator
    total = sum(counts)
    below = 0
    scores = []
    for n in counts:
        above = total - below - n
        scores.append(abs((den - num) * below - num * above))
        below += n
    return scores


def quantile_rank_half_width(plan: Plan) -> float:
    """95 % bound on the selection's score gap (McKenna & Sheldon 2020 / the exponential
    mechanism's tail: P[gap > scale * ln(C / alpha)] <= alpha), in rows of rank."""
    cal = plan.calibrations[0]
    q = Fraction(plan.spec.quantile)  # type: ignore[arg-type]
    return cal.scale * math.log(len(plan.candidates) / ALPHA) / q.denominator


def _release_quantile(plan: Plan, counts: list[list[int]]) -> DPRelease:
    cal = plan.calibrations[0]
    q = Fraction(plan.spec.quantile)  # type: ignore[arg-type]
    rank_hw = quantile_rank_half_width(plan)
    values: dict[str, float] = {}
    exact: dict[str, float] = {}
    for key, group_counts in zip(plan.keys, counts):
        scores = _quantile_scores(group_counts, q)
        values[key] = plan.candidates[int(cal(scores))]
        exact[key] = plan.candidates[min(range(len(scores)), key=scores.__getitem__)]
    return DPRelease(
        values=values,
        noise_scale={k: cal.scale / q.denominator for k in plan.keys},
        accuracy={k: rank_hw for k in plan.keys},
        accuracy_unit="rank",
        mechanism=NOISY_MAX,
        accounting=cal.measure,
        epsilon=plan.epsilon,
        components=plan.components(),
        statistic=plan.spec.statistic.value,
        exact=exact,
    )


def _mean(g: Grid, c: int, s: int, a_c: float, a_s: float) -> tuple[float, float]:
    """mean = mid + S'/C', clamped; half-width from the union bound over both noises.

    With true C, S and centered true mean m = S/C (|m| <= B), the error of S'/C' is
    (dS - m dC)/C', so |error| <= (a_s + B a_c)/C' when |dS| <= a_s and |dC| <= a_c,
    which holds with probability >= 1 - alpha when each bound is taken at alpha/2.
    """
    width = Fraction(g.q_hi - g.q_lo)
    if c <= 0:
        return float(g.q_mid * g.step), float(g.centered_bound * g.step)
    m = Fraction(g.q_mid) + Fraction(s, c)
    m = min(max(m, Fraction(g.q_lo)), Fraction(g.q_hi))
    hw = min((Fraction(a_s) + g.centered_bound * Fraction(a_c)) / c, width)
    return float(m * g.step), float(hw * g.step)


def _variance_of(g: Grid, c: int | Fraction, s: int | Fraction, q: int | Fraction) -> Fraction:
    if c <= 0:
        return Fraction(0)
    shift = 2**g.square_shift
    v = Fraction(q) * shift / Fraction(c) - (Fraction(s) / Fraction(c)) ** 2
    v = min(max(v, Fraction(0)), Fraction(g.centered_bound) ** 2)
    return Fraction(v * g.step**2)


def _variance(g: Grid, c: int, s: int, q: int, a_c: float, a_s: float, a_2: float) -> tuple[float, float]:
    """Variance and a conservative half-width by interval arithmetic over the three noises."""
    est = _variance_of(g, c, s, q)
    full = Fraction(g.centered_bound) ** 2 * g.step**2
    c_lo, c_hi = Fraction(c) - Fraction(a_c), Fraction(c) + Fraction(a_c)
    if c_lo < 1:
        return float(est), float(full)
    shift = 2**g.square_shift
    s_lo, s_hi = Fraction(s) - Fraction(a_s), Fraction(s) + Fraction(a_s)
    q_lo, q_hi = max(Fraction(q) - Fraction(a_2), Fraction(0)), Fraction(q) + Fraction(a_2)
    abs_s_min = Fraction(0) if s_lo <= 0 <= s_hi else min(abs(s_lo), abs(s_hi))
    abs_s_max = max(abs(s_lo), abs(s_hi))
    v_hi = q_hi * shift / c_lo - (abs_s_min / c_hi) ** 2
    v_lo = q_lo * shift / c_hi - (abs_s_max / c_lo) ** 2
    top = Fraction(g.centered_bound) ** 2
    v_hi = min(max(v_hi, Fraction(0)), top) * g.step**2
    v_lo = min(max(v_lo, Fraction(0)), top) * g.step**2
    hw = min(max(v_hi - est, est - v_lo, Fraction(0)), full)
    return float(est), float(hw)


def _bounded(
    frame: pl.LazyFrame | BoundedFrame, registration: DatasetRegistration, columns: set[str]
) -> pl.LazyFrame:
    if isinstance(frame, BoundedFrame):
        if frame.registration_digest != registration.digest():
            raise YumenError(
                Code.INTERNAL,
                "the bounded frame was made for another registration",
                hint="call bound_contributions again for this registration",
            )
        return frame.frame.lazy()
    if isinstance(frame, pl.LazyFrame):
        if not registration.privacy_unit.column:
            return frame
        # order-dependent (stable sort, shift, forward fill): run it on the in-memory engine,
        # on the columns the queries read only
        unit = registration.privacy_unit.column
        needed = sorted(columns | {unit})
        check_columns(frame, registration, needed)
        return truncate(frame.select(needed), registration).frame.lazy()
    raise _bad(f"dp_query takes a polars LazyFrame or a BoundedFrame, not {type(frame).__name__}")


def dp_queries(
    frame: pl.LazyFrame | BoundedFrame | AggregateEngine,
    registration: DatasetRegistration,
    queries: Sequence[Query | QuerySpec],
    epsilons: Sequence[Fraction],
) -> list[DPRelease]:
    """Answer several queries on one frame, each with its own ε, sharing the passes over data.

    Contribution bounding runs once; queries with the same grouping and filters share one
    aggregation pass. The releases compose sequentially: the total ε spent is the sum of the
    releases' ε (each at most its request). Everything else is as in ``dp_query``.

    ``frame`` may also be an :class:`~yumen.privacy._engine.AggregateEngine` that computes the
    bounded aggregates where the data lives (pushdown); planning and noise are the same.
    """
    if len(queries) != len(epsilons) or not queries:
        raise _bad("give one ε per query, and at least one query")
    plans = [make_plan(registration, as_spec(q), check_epsilon(e)) for q, e in zip(queries, epsilons)]
    used = {c for p in plans for c in (p.spec.column, p.spec.group_by, *(f.column for f in p.spec.filters)) if c}
    if isinstance(frame, (pl.LazyFrame, BoundedFrame)):
        lf = _bounded(frame, registration, used)
        for plan in plans:
            spec = plan.spec
            check_columns(lf, registration, [spec.column, spec.group_by, *(f.column for f in spec.filters)])
        engine: AggregateEngine = PolarsEngine(lf)
    elif isinstance(frame, AggregateEngine):
        engine = frame
    else:
        raise _bad(f"dp_query takes a polars LazyFrame, a BoundedFrame or an engine, not {type(frame).__name__}")
    passes: dict[tuple[object, ...], list[int]] = {}
    for i, plan in enumerate(plans):
        if plan.spec.statistic is not Statistic.QUANTILE:
            passes.setdefault(grouping(plan), []).append(i)
    aggregates: dict[int, dict[str, list[int]]] = {}
    for indices in passes.values():
        for i, agg in zip(indices, engine.aggregate(registration, [plans[i] for i in indices])):
            aggregates[i] = agg
    releases = [
        _release_quantile(plan, engine.candidate_counts(registration, plan))
        if plan.spec.statistic is Statistic.QUANTILE
        else _release(plan, aggregates[i])
        for i, plan in enumerate(plans)
    ]
    for plan, release in zip(plans, releases):
        logger.info(
            "dp release on dataset %s: %s over %d keys, epsilon %s",
            registration.id,
            plan.spec.statistic.value,
            len(plan.keys),
            release.epsilon,
        )
    return releases


def dp_query(
    frame: pl.LazyFrame | BoundedFrame | AggregateEngine,
    registration: DatasetRegistration,
    query: Query | QuerySpec,
    epsilon: Fraction,
) -> DPRelease:
    """Answer ``query`` on ``frame`` with ε-DP (pure, add/remove-one-privacy-unit).

    Bounds, categories and the contribution limit come only from ``registration``. Pass a
    ``BoundedFrame`` (from ``bound_contributions``) to skip per-query truncation. Returns a
    ``DPRelease`` whose ``epsilon`` (exact, certified by OpenDP) is at most ``epsilon``; its
    ``exact`` field is pre-noise and must never leave the connector.
    """
    return dp_queries(frame, registration, [query], [epsilon])[0]


# ---------------------------------------------------------------------------------------------
# forecasting


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccuracyForecast:
    """What a query would cost and how accurate it would be, before any data is touched.

    ``half_width`` is the 95 % half-width per released value for count, sum and histogram
    (value units), and for quantiles (rows of rank, ``accuracy_unit == "rank"``).
    For mean and variance it depends on the (unknown) number of rows per group: call
    ``half_width_at(rows)``.
    """

    statistic: str
    mechanism: str
    epsilon: Fraction
    components: tuple[Component, ...]
    keys: tuple[str, ...]
    half_width: float | None
    confidence: Fraction = CONFIDENCE
    accuracy_unit: str = "value"  # "rank" for quantiles
    _plan: Plan = dataclasses.field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.epsilon != sum((c.epsilon for c in self.components), Fraction(0)):
            raise YumenError(Code.INTERNAL, "forecast ε must equal its components' sum")

    def half_width_at(self, rows: int) -> float:
        """The 95 % half-width for a group of about ``rows`` rows (exact for count and sum)."""
        if rows < 0:
            raise _bad("rows must be non-negative")
        if self.half_width is not None:
            return self.half_width
        plan = self._plan
        g = need_grid(plan)
        n = len(plan.parts)
        a_c = plan.calibrations[0].half_width(ALPHA / n)
        a_s = plan.calibrations[1].half_width(ALPHA / n)
        if plan.spec.statistic is Statistic.MEAN:
            # at the centre: a typical noisy count of `rows`, centered sum 0
            return _mean(g, rows, 0, a_c, a_s)[1]
        a_2 = plan.calibrations[2].half_width(ALPHA / n)
        # a spread at half the maximal variance, centered sum 0
        q = Fraction(rows * g.square_bound, 2)
        return _variance(g, rows, 0, int(q), a_c, a_s, a_2)[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": self.statistic,
            "mechanism": self.mechanism,
            "epsilon": f"{self.epsilon.numerator}/{self.epsilon.denominator}",
            "components": [c.to_dict() for c in self.components],
            "keys": list(self.keys),
            "half_width": self.half_width,
            "confidence": f"{self.confidence.numerator}/{self.confidence.denominator}",
            "accuracy_unit": self.accuracy_unit,
        }


def dp_accuracy(registration: DatasetRegistration, query: Query | QuerySpec, epsilon: Fraction) -> AccuracyForecast:
    """Predict noise scales and 95 % half-widths of ``dp_query`` without touching data.

    Uses the very measurements ``dp_query`` would use (same cache), so the forecast is the
    release's own accuracy for count, sum and histogram.
    """
    eps = check_epsilon(epsilon)
    spec = as_spec(query)
    plan = make_plan(registration, spec, eps)
    half_width = None
    if spec.statistic in (Statistic.COUNT, Statistic.HISTOGRAM, Statistic.SUM):
        half_width = float(plan.calibrations[0].half_width(ALPHA) * plan.parts[0].unit)
    if spec.statistic is Statistic.QUANTILE:
        half_width = quantile_rank_half_width(plan)
    return AccuracyForecast(
        statistic=spec.statistic.value,
        mechanism=plan.calibrations[0].mechanism,
        epsilon=plan.epsilon,
        components=plan.components(),
        keys=plan.keys,
        half_width=half_width,
        accuracy_unit="rank" if spec.statistic is Statistic.QUANTILE else "value",
        _plan=plan,
    )
