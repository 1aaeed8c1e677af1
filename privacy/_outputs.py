"""DP release of algorithm outputs: the approved-algorithm tier and sample-and-aggregate.

Runs inside the department's connector.

An arbitrary algorithm gives no stability guarantee: one person can move its output anywhere.
Each declared output is therefore clamped to its declared range ``[L, U]`` and released with
OpenDP's (lattice) Laplace noise at sensitivity ``U - L`` (``release_outputs``).

Sample-and-aggregate (GUPT, Smith 2011; Mohan et al. 2012) does better for custom code: the
rows are split into ``k`` disjoint blocks by privacy unit (``partition_blocks``), the algorithm
runs once per block, and ``aggregate_blocks`` clamps each block's output and averages. One
unit lives in exactly one block, so adding or removing it changes one block's clamped output
by at most ``U - L`` and the average by at most ``(U - L) / k``: the noise shrinks by ``k``,
while each block sees only ``1/k`` of the data (the trade-off is in docs/privacy.md).

ε is split evenly over the declared outputs and composes sequentially; the ε spent is the
exact sum of what OpenDP's privacy maps certify. Under zCDP (``accounting=Accounting.ZCDP``)
the budget is ρ, split the same way, and each output gets Gaussian noise at the same
sensitivity (for one real number L1 and L2 sensitivity coincide).
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from typing import Mapping, Sequence

from yumen.errors import Code, YumenError
from yumen.jobs import OutputRange
from yumen.loss import Accounting

from ._mechanisms import (
    CONFIDENCE,
    GAUSSIAN,
    LAPLACE,
    PURE,
    ZCDP,
    Calibrated,
    calibrate,
    check_epsilon,
    float_at_least,
    split_epsilon,
)
from ._record import Component, DPRelease

logger = logging.getLogger(__name__)

MAX_OUTPUTS = 256
MAX_BLOCKS = 100_000
ALPHA = 1 - float(CONFIDENCE)


def _bad(what: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, what, hint=hint)


def _check_ranges(ranges: Sequence[OutputRange]) -> tuple[OutputRange, ...]:
    ranges = tuple(ranges)
    if not ranges:
        raise _bad("no outputs declared", "declare each output as NAME=LOWER:UPPER")
    if len(ranges) > MAX_OUTPUTS:
        raise _bad(f"{len(ranges)} outputs declared; the limit is {MAX_OUTPUTS}")
    if not all(isinstance(r, OutputRange) for r in ranges):
        raise _bad("ranges must be OutputRange records")
    names = [r.name for r in ranges]
    if len(set(names)) != len(names):
        raise _bad("output names repeat")
    return ranges


def _clamp(x: float, r: OutputRange) -> float:
    return min(max(x, r.lower), r.upper)


def _width(r: OutputRange) -> Fraction:
    return Fraction(r.upper) - Fraction(r.lower)


def _noise(
    ranges: tuple[OutputRange, ...],
    clamped: Mapping[str, float],
    sensitivities: Mapping[str, float],
    epsilon: Fraction,
    statistic: str,
    accounting: Accounting,
) -> DPRelease:
    eps_each = split_epsilon(epsilon, len(ranges))
    zcdp = accounting is Accounting.ZCDP
    mechanism, measure = (GAUSSIAN, ZCDP) if zcdp else (LAPLACE, PURE)
    values: dict[str, float] = {}
    scales: dict[str, float] = {}
    accuracy: dict[str, float] = {}
    components: list[Component] = []
    for r in ranges:
        cal: Calibrated = calibrate(mechanism, sensitivities[r.name], eps_each, vector=False, measure=measure)
        values[r.name] = float(cal(clamped[r.name]))
        scales[r.name] = cal.scale
        accuracy[r.name] = cal.half_width(ALPHA)
        components.append(
            Component(
                name=f"output:{r.name}",
                mechanism=mechanism,
                sensitivity=cal.sensitivity,
                scale=cal.scale,
                epsilon=cal.epsilon,
                measure=measure,
            )
        )
    return DPRelease(
        values=values,
        noise_scale=scales,
        accuracy=accuracy,
        mechanism=mechanism,
        accounting=accounting.value,
        epsilon=sum((c.epsilon for c in components), Fraction(0)),
        components=tuple(components),
        statistic=statistic,
        exact=dict(clamped),
    )


def release_outputs(outputs: Mapping[str, float], ranges: Sequence[OutputRange], epsilon: Fraction, *,
                    accounting: Accounting = Accounting.PURE) -> DPRelease:
    """Clamp each declared output to its range and add Laplace noise at sensitivity ``U - L``.

    Refuses undeclared outputs, missing outputs and non-finite values. (A refusal is itself a
    data-dependent signal; the connector reports it as a generic job failure with the budget
    already charged.) ``exact`` holds the clamped, pre-noise outputs for the local commitment.
    """
    eps = check_epsilon(epsilon)
    ranges = _check_ranges(ranges)
    declared = {r.name for r in ranges}
    undeclared = sorted(set(outputs) - declared)
    if undeclared:
        raise _bad(f"the algorithm returned undeclared outputs: {', '.join(undeclared)}", "declare every output with its range")
    missing = sorted(declared - set(outputs))
    if missing:
        raise _bad(f"the algorithm did not return declared outputs: {', '.join(missing)}")
    clamped: dict[str, float] = {}
    for r in ranges:
        v = outputs[r.name]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _bad(f"output {r.name!r} is not a number")
        if not math.isfinite(v):
            raise _bad(f"output {r.name!r} is not finite")
        clamped[r.name] = _clamp(float(v), r)
    # Two clamped floats differ by at most U - L exactly (clamping does not round).
    sens = {r.name: float_at_least(_width(r)) for r in ranges}
    release = _noise(ranges, clamped, sens, eps, "outputs", accounting)
    logger.info("released %d algorithm outputs at epsilon %s", len(ranges), release.epsilon)
    return release


def aggregate_blocks(block_outputs: Sequence[Mapping[str, float]], ranges: Sequence[OutputRange], epsilon: Fraction, *,
                     accounting: Accounting = Accounting.PURE) -> DPRelease:
    """GUPT-style aggregation: clamp every block's outputs, average over the k blocks, add noise.

    Block outputs come from untrusted code running on private data, so nothing about them may
    change the *shape* of what happens: a missing, non-numeric or non-finite output counts as
    the range's midpoint, undeclared names are ignored (never an error, which would be a
    data-dependent signal). Sensitivity per output is ``(U - L) / k`` plus one unit in the last
    place of ``max(|L|, |U|)`` for the float rounding of the average.
    """
    eps = check_epsilon(epsilon)
    ranges = _check_ranges(ranges)
    blocks = list(block_outputs)
    k = len(blocks)
    if not 1 <= k <= MAX_BLOCKS:
        raise _bad(f"sample-and-aggregate needs between 1 and {MAX_BLOCKS} blocks, got {k}")
    averages: dict[str, float] = {}
    sens: dict[str, float] = {}
    for r in ranges:
        mid = (Fraction(r.lower) + Fraction(r.upper)) / 2
        total = Fraction(0)
        for block in blocks:
            v = block.get(r.name) if isinstance(block, Mapping) else None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                total += mid
            else:
                total += Fraction(_clamp(float(v), r))
        averages[r.name] = float(total / k)  # exact average, rounded once
        ulp = Fraction(math.ulp(max(abs(r.lower), abs(r.upper))))
        sens[r.name] = float_at_least(_width(r) / k + ulp)
    release = _noise(ranges, averages, sens, eps, "sample-and-aggregate", accounting)
    # How many outputs were substituted depends on private data: never logged.
    logger.info("aggregated %d blocks x %d outputs at epsilon %s", k, len(ranges), release.epsilon)
    return release
