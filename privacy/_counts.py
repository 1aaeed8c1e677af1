"""Noisy counts: one OpenDP measurement over a vector of integer counts.

Used for figures about a dataset rather than answers to a query: the department's quality
report releases how many values are null, out of bounds or undeclared, how many rows repeat
or lack a privacy-unit id, and a histogram per column. The caller states the vector's
sensitivity (add or remove one privacy unit); the noise comes from the same calibrated
OpenDP measurements as every query (``make_geometric`` under pure ε-DP, the discrete
Gaussian under ρ-zCDP), and OpenDP's privacy map certifies the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

from yumen.errors import Code, YumenError

from ._mechanisms import CONFIDENCE, DISCRETE_GAUSSIAN, GEOMETRIC, PURE, ZCDP, calibrate
from ._record import Component, DPRelease

__all__ = ["release_counts"]


def release_counts(counts: Mapping[str, int], *, sensitivity: int, loss: Fraction, accounting: str = PURE,
                   name: str = "counts") -> DPRelease:
    """Release ``counts`` (name → exact count) with one noise draw each.

    ``sensitivity`` bounds how far adding or removing one privacy unit moves the whole
    vector: in L1 under pure accounting, in L2 under zCDP (an L1 bound is also an L2 bound).
    ``loss`` is ε (pure) or ρ (zcdp). The exact counts stay in ``release.exact``.
    """
    if not counts:
        raise YumenError(Code.INTERNAL, "release_counts needs at least one count")
    if any(type(v) is not int for v in counts.values()):
        raise YumenError(Code.INTERNAL, "release_counts takes exact integer counts")
    if accounting not in (PURE, ZCDP):
        raise YumenError(Code.INTERNAL, f"unknown accounting {accounting!r}")
    mechanism = GEOMETRIC if accounting == PURE else DISCRETE_GAUSSIAN
    cal = calibrate(mechanism, int(sensitivity), loss, measure=accounting)
    keys = list(counts)
    noisy = cal([counts[k] for k in keys])
    half = cal.half_width(float(1 - CONFIDENCE))
    return DPRelease(
        values={k: float(v) for k, v in zip(keys, noisy)},
        noise_scale={k: cal.scale for k in keys},
        accuracy={k: half for k in keys},
        mechanism=mechanism,
        epsilon=cal.epsilon,
        components=(Component(name=name, mechanism=mechanism, sensitivity=float(sensitivity), scale=cal.scale,
                              epsilon=cal.epsilon, measure=accounting),),
        statistic=name,
        exact={k: float(counts[k]) for k in keys},
        accounting=accounting,
    )
