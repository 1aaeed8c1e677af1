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
from opendp.accuracy import discrete_laplacian_scale_to_accuracy, laplacian_scale_to_accuracy

from yumen.errors import Code, YumenError

logger = logging.getLogger(__name__)

dp.enable_features("contrib")

GEOMETRIC = "geometric"  # discrete Laplace (two-sided geometric) on integers
LAPLACE = "laplace"  # OpenDP's lattice Laplace on floats
NOISY_MAX = "noisy-max"  # OpenDP's report-noisy-max selection (exponential-mechanism family)
MECHANISMS = (GEOMETRIC, LAPLACE, NOISY_MAX)

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
    """An OpenDP measurement with the scale and the ε its own privacy map certifies."""

    mechanism: str
    sensitivity: int | float
    scale: float
    epsilon: Fraction  # exactly Fraction(meas.map(sensitivity)); never above the requested ε
    measurement: Any = dataclasses.field(repr=False, compare=False)
    vector: bool = True

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
    raise YumenError(Code.INTERNAL, f"no additive accuracy for {mechanism!r}")


def _build(mechanism: str, scale: float, vector: bool) -> Any:
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
        return dp.m.make_noisy_max(*space, dp.max_divergence(), scale=scale, negate=True)
    raise YumenError(Code.INTERNAL, f"unknown mechanism {mechanism!r}")


@functools.lru_cache(maxsize=1024)
def calibrate(mechanism: str, sensitivity: int | float, epsilon: Fraction, *, vector: bool = True) -> Calibrated:
    """Build the OpenDP measurement for ``sensitivity`` (in the vector's L1 metric) at ``epsilon``.

    The scale starts at the exact ``sensitivity / ε`` rounded up to a float, and is nudged
    upwards until OpenDP's privacy map (which rounds conservatively) certifies at most ``ε``.
    """
    if mechanism not in MECHANISMS:
        raise YumenError(Code.INTERNAL, f"unknown mechanism {mechanism!r}")
    if not (isinstance(epsilon, Fraction) and epsilon > 0):
        raise YumenError(Code.INTERNAL, f"ε must be a positive Fraction, got {epsilon!r}")
    if mechanism in (GEOMETRIC, NOISY_MAX) and not (isinstance(sensitivity, int) and sensitivity >= 1):
        raise YumenError(Code.INTERNAL, f"integer sensitivity must be a positive int, got {sensitivity!r}")
    if mechanism == LAPLACE and not (isinstance(sensitivity, float) and math.isfinite(sensitivity) and sensitivity > 0):
        raise YumenError(Code.INTERNAL, f"float sensitivity must be positive and finite, got {sensitivity!r}")
    # noisy max over non-monotonic scores costs 2 d_in / scale
    factor = 2 if mechanism == NOISY_MAX else 1
    scale = float_at_least(factor * Fraction(sensitivity) / epsilon)
    for _ in range(_MAX_CALIBRATION_STEPS):
        meas = _build(mechanism, scale, vector)
        spent = Fraction(meas.map(d_in=sensitivity))
        if spent <= epsilon:
            logger.debug("calibrated %s sensitivity=%s epsilon=%s scale=%s", mechanism, sensitivity, epsilon, scale)
            return Calibrated(
                mechanism=mechanism,
                sensitivity=sensitivity,
                scale=scale,
                epsilon=spent,
                measurement=meas,
                vector=vector,
            )
        scale = math.nextafter(scale, math.inf)
    raise YumenError(
        Code.INTERNAL,
        f"could not calibrate {mechanism} for sensitivity {sensitivity} within ε {epsilon}",
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
