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
   2^30 and every sum is exact in Int64 (up to ``MAX_ROWS`` rows). Float sums are never
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
   sum of what OpenDP certifies.
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

from yumen.catalog import Column, ColumnType, DatasetRegistration
from yumen.errors import Code, YumenError
from yumen.jobs import Query

from ._mechanisms import CONFIDENCE, GEOMETRIC, Calibrated, calibrate, check_epsilon, split_epsilon
from ._record import UNGROUPED, Component, DPRelease
from ._spec import Filter, FilterOp, QuerySpec, Statistic, as_spec, validate

logger = logging.getLogger(__name__)

GRID_BITS = 30  # per-row contributions are integers of magnitude <= 2^30 (squares: 2^31)
MAX_ROWS = 2**32  # with per-row magnitude <= 2^31, Int64 sums cannot overflow below this
ALPHA = 1 - float(CONFIDENCE)


def _bad(what: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, what, hint=hint)


def _release(plan: _Plan, agg: dict[str, list[int]]) -> DPRelease:
    spec = plan.spec
    noisy = {p.name: [int(v) for v in c(agg[p.name])] for p, c in zip(plan.parts, plan.calibrations)}
    cal = {p.name: c for p, c in zip(plan.parts, plan.calibrations)}
    unit = {p.name: p.unit for p in plan.parts}
    values: dict[str, float] = {}
    exact: dict[str, float] = {}
    scale: dict[str, float] = {}
    accuracy: dict[str, float] = {}
    n_parts = len(plan.parts)
    for i, key in enumerate(plan.keys):
        if spec.statistic in (Statistic.COUNT, Statistic.HISTOGRAM, Statistic.SUM):
            name = plan.parts[0].name
            u = unit[name]
            values[key] = float(noisy[name][i] * u)
            exact[key] = float(agg[name][i] * u)
            scale[key] = float(cal[name].scale * u)
            accuracy[key] = float(cal[name].half_width(ALPHA) * u)
            continue
        g = _need_grid(plan)
        c_noisy = noisy["count"][i]
        c_exact = agg["count"][i]
        a_c = cal["count"].half_width(ALPHA / n_parts)
        a_s = cal["centered_sum"].half_width(ALPHA / n_parts)
        s_noisy = noisy["centered_sum"][i]
        s_exact = agg["centered_sum"][i]
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
        mechanism=GEOMETRIC,
        epsilon=plan.epsilon,
        components=plan.components(),
        statistic=spec.statistic.value,
        exact=exact,
    )


def _mean(g: _Grid, c: int, s: int, a_c: float, a_s: float) -> tuple[float, float]:
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


def _variance_of(g: _Grid, c: int | Fraction, s: int | Fraction, q: int | Fraction) -> Fraction:
    if c <= 0:
        return Fraction(0)
    shift = 2**g.square_shift
    v = Fraction(q) * shift / Fraction(c) - (Fraction(s) / Fraction(c)) ** 2
    v = min(max(v, Fraction(0)), Fraction(g.centered_bound) ** 2)
    return v * g.step**2


def _variance(g: _Grid, c: int, s: int, q: int, a_c: float, a_s: float, a_2: float) -> tuple[float, float]:
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


def dp_query(
    frame: pl.LazyFrame | BoundedFrame,
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
    eps = check_epsilon(epsilon)
    spec = as_spec(query)
    plan = _plan(registration, spec, eps)
    if isinstance(frame, BoundedFrame):
        if frame.registration_digest != registration.digest():
            raise YumenError(
                Code.INTERNAL,
                "the bounded frame was made for another registration",
                hint="call bound_contributions again for this registration",
            )
        lf = frame.frame.lazy()
    elif isinstance(frame, pl.LazyFrame):
        lf = frame
        if registration.privacy_unit.column:
            # order-dependent (stable sort, shift, forward fill): run it on the in-memory engine
            _check_columns(lf, registration, [registration.privacy_unit.column])
            lf = _truncate(frame, registration).collect().lazy()
    else:
        raise _bad(f"dp_query takes a polars LazyFrame or a BoundedFrame, not {type(frame).__name__}")
    needed = [spec.column, spec.group_by, *(f.column for f in spec.filters)]
    _check_columns(lf, registration, needed)
    agg = _aggregate(lf, registration, plan)
    release = _release(plan, agg)
    logger.info(
        "dp release on dataset %s: %s over %d keys, epsilon %s",
        registration.id,
        spec.statistic.value,
        len(plan.keys),
        release.epsilon,
    )
    return release


# ---------------------------------------------------------------------------------------------
# forecasting


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccuracyForecast:
    """What a query would cost and how accurate it would be, before any data is touched.

    ``half_width`` is the 95 % half-width per released value for count, sum and histogram.
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
    _plan: _Plan = dataclasses.field(repr=False, compare=False)

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
        g = _need_grid(plan)
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
        }


def dp_accuracy(registration: DatasetRegistration, query: Query | QuerySpec, epsilon: Fraction) -> AccuracyForecast:
    """Predict noise scales and 95 % half-widths of ``dp_query`` without touching data.

    Uses the very measurements ``dp_query`` would use (same cache), so the forecast is the
    release's own accuracy for count, sum and histogram.
    """
    eps = check_epsilon(epsilon)
    spec = as_spec(query)
    plan = _plan(registration, spec, eps)
    half_width = None
    if spec.statistic in (Statistic.COUNT, Statistic.HISTOGRAM, Statistic.SUM):
        half_width = float(plan.calibrations[0].half_width(ALPHA) * plan.parts[0].unit)
    return AccuracyForecast(
        statistic=spec.statistic.value,
        mechanism=GEOMETRIC,
        epsilon=plan.epsilon,
        components=plan.components(),
        keys=plan.keys,
        half_width=half_width,
        _plan=plan,
    )
