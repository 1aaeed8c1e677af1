"""Privacy loss: the two accountings a dataset may use, and exact conversions between them.

Pure ε-DP, zero-concentrated DP (ρ) and (ε, δ)-DP.

A dataset whose registration says ``accounting = "zcdp"`` keeps its budget in ρ. Operators,
policies and departments still speak ε: a job's ε and every cap are read as (ε, δ)-DP at the
dataset's δ and converted to the largest ρ whose guarantee is no weaker (Bun and Steinke,
"Concentrated Differential Privacy", TCC 2016, Prop. 1.3: ρ-zCDP implies
(ρ + 2·√(ρ·ln(1/δ)), δ)-DP), solved for ρ:

    ρ(ε, δ) = (√(ln(1/δ) + ε) − √(ln(1/δ)))²

The ledger must be exact and replayable anywhere, so both directions are computed with
:mod:`decimal` at 60 significant digits (whose ``ln`` and ``sqrt`` are correctly rounded,
hence the same on every machine) and then rounded to a fixed grid in the safe direction:
ρ *down* to a multiple of 10⁻¹⁵ (a charge or a cap never admits more loss than its ε says),
and ε *up* to a multiple of 10⁻⁹ (a reported loss is never understated).
"""

from __future__ import annotations

import decimal
import enum
from fractions import Fraction

from yumen.errors import Code, YumenError

__all__ = ["Accounting", "RHO_GRID", "EPS_GRID", "rho_of_epsilon", "epsilon_of_rho", "rho_of_pure"]


class Accounting(enum.Enum):
    """How a dataset's privacy budget is accounted (see docs/privacy.md)."""

    PURE = "pure"  # pure ε-DP; Laplace and geometric noise
    ZCDP = "zcdp"  # zero-concentrated DP (ρ) at a registered δ; Gaussian noise

RHO_GRID = 10**15
EPS_GRID = 10**9
_CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)


def _check_delta(delta: Fraction) -> None:
    if not 0 < delta < 1:
        raise YumenError(Code.INTERNAL, f"δ must be in (0, 1), got {delta}")


def _dec(x: Fraction) -> decimal.Decimal:
    return _CTX.divide(decimal.Decimal(x.numerator), decimal.Decimal(x.denominator))


def rho_of_epsilon(epsilon: Fraction, delta: Fraction) -> Fraction:
    """The largest ρ on the 10⁻¹⁵ grid whose (ε', δ) guarantee has ε' ≤ ``epsilon``."""
    _check_delta(delta)
    if epsilon <= 0:
        return Fraction(0)
    log_inv = _CTX.ln(_dec(1 / delta))
    root = _CTX.subtract(_CTX.sqrt(_CTX.add(log_inv, _dec(epsilon))), _CTX.sqrt(log_inv))
    rho = _CTX.multiply(root, root)
    # round down, then step down once more: the 60-digit value is within 1e-55 of the truth
    units = int(_CTX.multiply(rho, decimal.Decimal(RHO_GRID)).to_integral_value(rounding=decimal.ROUND_FLOOR)) - 1
    return Fraction(max(units, 0), RHO_GRID)


def epsilon_of_rho(rho: Fraction, delta: Fraction, *, round_up: bool = True) -> Fraction:
    """The ε of ρ-zCDP at ``delta``: ρ + 2·√(ρ·ln(1/δ)), on the 10⁻⁹ grid.

    Rounded up by default (a loss is never understated); ``round_up=False`` rounds down, for
    "you may still ask for ε ≤ …" (the job's ρ is then at most ``rho``).
    """
    _check_delta(delta)
    if rho <= 0:
        return Fraction(0)
    r = _dec(rho)
    eps = _CTX.add(r, _CTX.multiply(decimal.Decimal(2), _CTX.sqrt(_CTX.multiply(r, _CTX.ln(_dec(1 / delta))))))
    scaled = _CTX.multiply(eps, decimal.Decimal(EPS_GRID))
    if round_up:
        units = int(scaled.to_integral_value(rounding=decimal.ROUND_CEILING)) + 1
    else:
        units = int(scaled.to_integral_value(rounding=decimal.ROUND_FLOOR)) - 1
        while units > 0 and rho_of_epsilon(Fraction(units, EPS_GRID), delta) > rho:
            units -= 1
    return Fraction(max(units, 0), EPS_GRID)


def rho_of_pure(epsilon: Fraction) -> Fraction:
    """ε-DP implies (ε²/2)-zCDP (Bun and Steinke, Prop. 1.4): exact."""
    return epsilon * epsilon / 2
