"""Exact conversions between ε, ρ and (ε, δ): always on the safe side, and tight."""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from yumen.loss import EPS_GRID, RHO_GRID, epsilon_of_rho, rho_of_epsilon, rho_of_pure

EPS = st.fractions(min_value=Fraction(1, 1000), max_value=Fraction(100), max_denominator=10**6)
DELTA = st.sampled_from([Fraction(1, 10**5), Fraction(1, 10**6), Fraction(1, 10**9), Fraction(1, 10**12)])


@given(eps=EPS, delta=DELTA)
def test_the_rho_of_an_epsilon_never_admits_more_than_that_epsilon(eps, delta):
    rho = rho_of_epsilon(eps, delta)
    assert rho.denominator <= RHO_GRID and rho > 0
    # the (ε, δ) guarantee of that ρ, computed in floats with a margin, is within ε
    implied = float(rho) + 2 * math.sqrt(float(rho) * math.log(1 / float(delta)))
    assert implied <= float(eps) * (1 + 1e-9)
    # and the rounding costs almost nothing: ρ is within 1e-14 of the exact solution
    log = math.log(1 / float(delta))
    exact = (math.sqrt(log + float(eps)) - math.sqrt(log)) ** 2
    assert abs(float(rho) - exact) < 1e-12 * max(1.0, exact)


@given(eps=EPS, delta=DELTA)
def test_reported_epsilon_is_never_below_the_truth_and_round_trips(eps, delta):
    rho = rho_of_epsilon(eps, delta)
    up = epsilon_of_rho(rho, delta)
    down = epsilon_of_rho(rho, delta, round_up=False)
    assert up.denominator <= EPS_GRID and down <= up
    assert up <= eps + Fraction(2, EPS_GRID)  # reported back, at most two grid steps above what was asked
    assert rho_of_epsilon(down, delta) <= rho  # asking for the rounded-down ε never costs more than ρ


def test_pure_dp_converts_to_half_its_square():
    assert rho_of_pure(Fraction(1, 2)) == Fraction(1, 8)
