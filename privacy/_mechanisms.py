"""OpenDP noise mechanisms, calibrated exactly and cached.

Every random number Yumen adds to a statistic comes from an OpenDP measurement built here;
nothing in ``yumen.privacy`` draws from ``random`` or ``numpy.random``.

Why measurements over vectors, and not OpenDP's Polars context
--------------------------------------------------------------
OpenDP's Polars API (``dp.Context.compositor(...).query()...release()``) re-derives the
stability of the whole plan and re-builds its measurements on every release: about 0.6 s
per query here, against a 150 ms budget for the whole operator-to-result path. The
stability analysis Yumen needs is small and fixed (truncate each privacy unit to ``k``
rows, clamp to the registered bounds, sum integers), so the connector computes the
bounded aggregates in Polars itself and hands the resulting vectors to an OpenDP
measurement (``make_geometric`` for integers, ``make_laplace`` for floats) whose scale
is computed directly as ``sensitivity / ε``. Before any release the measurement's own
privacy map is asked ``map(d_in=sensitivity) <= ε`` in exact arithmetic, so OpenDP, not
Yumen, certifies the privacy loss of the noise. Construction costs ~1-20 ms and is cached
per (kind, sensitivity, ε); invoking a cached measurement costs microseconds.

Under zero-concentrated DP (a dataset registered with ``accounting = "zcdp"``) the additive
mechanisms are Gaussian instead (``make_gaussian``: a discrete Gaussian on integers, OpenDP's
lattice Gaussian on floats), calibrated to ρ through the L2 sensitivity, and report-noisy-max
is wrapped in OpenDP's ``make_pureDP_to_zCDP``; every measurement's ρ is again certified by
its own privacy map.

Features enabled: only ``"contrib"`` (OpenDP's name for constructors whose proofs are
written but not yet vetted by its committee). ``"floating-point"`` (now
``"idealized-numerics"``) is *not* enabled: in OpenDP 0.16 ``make_laplace`` on floats
samples on a 2^k lattice through its discrete-Laplace sampler and rounds the input to that
lattice, which is exactly the defence against Mironov's floating-point attack, and it needs
no extra feature.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from fractions import Fraction
from typing import Any, Sequence

import opendp.prelude as dp
from opendp.accuracy import (
    discrete_gaussian_scale_to_accuracy,
    discrete_laplacian_scale_to_accuracy,
    gaussian_scale_to_accuracy,
    laplacian_scale_to_accuracy,
)

from yumen.errors import Code, YumenError

logger = logging.getLogger(__name__)

dp.enable_features("contrib")

GEOMETRIC = "geometric"  # discrete Laplace (two-sided geometric) on integers
LAPLACE = "laplace"  # OpenDP's lattice Laplace on floats
NOISY_MAX = "noisy-max"  # OpenDP's report-noisy-max selection (exponential-mechanism family)
DISCRETE_GAUSSIAN = "discrete-gaussian"  # zCDP: OpenDP's discrete Gaussian on integers
GAUSSIAN = "gaussian"  # zCDP: OpenDP's lattice Gaussian on floats
MECHANISMS = (GEOMETRIC, LAPLACE, NOISY_MAX, DISCRETE_GAUSSIAN, GAUSSIAN)

# The two privacy measures a calibration certifies its loss in.
PURE = "pure"  # ε of pure differential privacy (max divergence)
ZCDP = "zcdp"  # ρ of zero-concentrated differential privacy

# Confidence level of every reported half-width.
CONFIDENCE = Fraction(95, 100)

_MAX_CALIBRATION_STEPS = 64


def float_at_least(x: Fraction) -> float:
    """The smallest float not below the exact rational ``x`` (for sensitivities and scales)."""
    f = float(x)
    while Fraction(f) < x:
        f = math.nextafter(f, math.inf)
    return f


@dataclasses.dataclass(frozen=True, kw_only=True)
class Calibrated:
    """An OpenDP measurement with the scale and the loss its own privacy map certifies.

    ``epsilon`` is that loss in the calibration's ``measure``: ε for ``PURE``, ρ for ``ZCDP``.
    """

    mechanism: str
    sensitivity: int | float
    scale: float
    epsilon: Fraction  # exactly Fraction(meas.map(sensitivity)); never above the requested loss
    measurement: Any = dataclasses.field(repr=False, compare=False)
    vector: bool = True
    measure: str = PURE

    def __call__(self, values: Sequence[int] | Sequence[float] | float) -> Any:
        return self.measurement(values)

    def half_width(self, alpha: float) -> float:
        """Half-width of the (1-alpha) interval of one noise draw, in the input's units."""
        return _half_width(self.mechanism, self.scale, alpha)


@functools.lru_cache(maxsize=4096)
def _half_width(mechanism: str, scale: float, alpha: float) -> float:
    if mechanism == GEOMETRIC:
        # OpenDP: alpha = P[|X| >= accuracy]; for integers the floor keeps the coverage.
        return float(math.floor(discrete_laplacian_scale_to_accuracy(scale, alpha)))
    if mechanism == LAPLACE:
        return float(laplacian_scale_to_accuracy(scale, alpha))
    if mechanism == DISCRETE_GAUSSIAN:
        if scale <= 1000:
            return float(math.floor(discrete_gaussian_scale_to_accuracy(scale, alpha)))
        # OpenDP sums the probability mass, which takes minutes at the scales of sums on a fine
        # grid. A decreasing density bounds its integer tail: P[X ≥ t] ≤ P[Y ≥ t − 1] for the
        # continuous Gaussian Y of the same scale (the discrete normalizer is at least σ√2π),
        # so the continuous half-width plus one keeps the coverage (equal to OpenDP's up to 1000).
        return float(math.ceil(gaussian_scale_to_accuracy(scale, alpha)) + 1)
    if mechanism == GAUSSIAN:
        return float(gaussian_scale_to_accuracy(scale, alpha))
    raise YumenError(Code.INTERNAL, f"no additive accuracy for {mechanism!r}")


def _build(mechanism: str, scale: float, vector: bool, measure: str = PURE) -> Any:
    if mechanism == GEOMETRIC:
        space = dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l1_distance(T=dp.i64)
        return dp.m.make_geometric(*space, scale=scale)
    if mechanism == LAPLACE:
        if vector:
            space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)
        else:
            space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
        return dp.m.make_laplace(*space, scale=scale)
    if mechanism == NOISY_MAX:
        # selects the index of the *lowest* score (negate=True); scores are not monotonic
        space = dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.linf_distance(T=dp.i64)
        meas = dp.m.make_noisy_max(*space, dp.max_divergence(), scale=scale, negate=True)
        return dp.c.make_pureDP_to_zCDP(meas) if measure == ZCDP else meas
    if mechanism == DISCRETE_GAUSSIAN:
        space = dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l2_distance(T=dp.i64)
        return dp.m.make_gaussian(*space, scale=scale)
    if mechanism == GAUSSIAN:
        if vector:
            space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)
        else:
            space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
        return dp.m.make_gaussian(*space, scale=scale)
    raise YumenError(Code.INTERNAL, f"unknown mechanism {mechanism!r}")


@functools.lru_cache(maxsize=1024)
def calibrate(mechanism: str, sensitivity: int | float, epsilon: Fraction, *, vector: bool = True,
              measure: str = PURE) -> Calibrated:
    """Build the OpenDP measurement for ``sensitivity`` at a loss of ``epsilon`` in ``measure``.

    Pure: ``sensitivity`` is in the vector's L1 metric (L∞ for noisy max) and the scale
    starts at the exact ``sensitivity / ε``. zCDP (``epsilon`` is then ρ): Gaussian mechanisms
    take the L2 sensitivity and start at ``sensitivity / √(2ρ)``; noisy max is calibrated
    to the ε with ε²/2 ≤ ρ and converted by OpenDP. Either way the scale is nudged upwards
    until OpenDP's privacy map (which rounds conservatively) certifies at most the request.
    """
    if mechanism not in MECHANISMS:
        raise YumenError(Code.INTERNAL, f"unknown mechanism {mechanism!r}")
    if measure not in (PURE, ZCDP):
        raise YumenError(Code.INTERNAL, f"unknown privacy measure {measure!r}")
    gaussian = mechanism in (DISCRETE_GAUSSIAN, GAUSSIAN)
    if gaussian != (measure == ZCDP) and mechanism != NOISY_MAX:
        raise YumenError(Code.INTERNAL, f"{mechanism} does not certify {measure} losses")
    if not (isinstance(epsilon, Fraction) and epsilon > 0):
        raise YumenError(Code.INTERNAL, f"the privacy loss must be a positive Fraction, got {epsilon!r}")
    if mechanism in (GEOMETRIC, NOISY_MAX, DISCRETE_GAUSSIAN) and not (isinstance(sensitivity, int) and sensitivity >= 1):
        raise YumenError(Code.INTERNAL, f"integer sensitivity must be a positive int, got {sensitivity!r}")
    if mechanism in (LAPLACE, GAUSSIAN) and not (isinstance(sensitivity, float) and math.isfinite(sensitivity) and sensitivity > 0):
        raise YumenError(Code.INTERNAL, f"float sensitivity must be positive and finite, got {sensitivity!r}")
    if gaussian:
        scale = float(sensitivity) / math.sqrt(2 * float(epsilon))
    else:
        # noisy max over non-monotonic scores costs 2 d_in / scale (ε; under zCDP ε²/2)
        factor = 2 if mechanism == NOISY_MAX else 1
        target = epsilon if measure == PURE else Fraction(math.sqrt(2 * float(epsilon)))
        scale = float_at_least(factor * Fraction(sensitivity) / target)
    for _ in range(_MAX_CALIBRATION_STEPS):
        meas = _build(mechanism, scale, vector, measure)
        spent = Fraction(meas.map(d_in=sensitivity))
        if spent <= epsilon:
            logger.debug("calibrated %s sensitivity=%s loss=%s (%s) scale=%s", mechanism, sensitivity, epsilon, measure, scale)
            return Calibrated(
                mechanism=mechanism,
                sensitivity=sensitivity,
                scale=scale,
                epsilon=spent,
                measurement=meas,
                vector=vector,
                measure=measure,
            )
        # move by a relative step: the map rounds conservatively, so one ulp may not be enough
        scale = max(math.nextafter(scale, math.inf), scale * (1 + 2**-40))
    raise YumenError(
        Code.INTERNAL,
        f"could not calibrate {mechanism} for sensitivity {sensitivity} within {measure} loss {epsilon}",
    )


def split_epsilon(epsilon: Fraction, parts: int) -> Fraction:
    """Each of ``parts`` sequentially composed measurements gets exactly ``ε / parts``."""
    if parts < 1:
        raise YumenError(Code.INTERNAL, "split into at least one part")
    return epsilon / parts


def check_epsilon(epsilon: Any) -> Fraction:
    """Refuse floats and non-positive budgets: budgets are exact (see ``yumen.jobs.parse_epsilon``)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (Fraction, int)):
        raise YumenError(
            Code.INVALID_ARGUMENT,
            f"ε must be an exact Fraction, got {type(epsilon).__name__}",
            hint="parse it with yumen.jobs.parse_epsilon(\"0.5\")",
        )
    eps = Fraction(epsilon)
    if eps <= 0:
        raise YumenError(Code.INVALID_ARGUMENT, f"ε must be positive, got {eps}", hint="ask for a positive ε such as 0.5")
    return eps
