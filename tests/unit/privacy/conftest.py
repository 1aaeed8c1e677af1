"""Shared fixtures for the privacy tests: registrations and a distribution checker.

The checker uses the Dvoretzky-Kiefer-Wolfowitz inequality, P(sup|F_n - F| > t) <= 2 exp(-2 n t^2),
which holds for every distribution, discrete ones included. With the threshold at a false-failure
probability of 1e-9 a correct mechanism practically never fails, whatever the seed, while a
mechanism whose scale is off by a factor of 2 is rejected with n of a few thousand.
"""

from __future__ import annotations

import math
import types
from typing import Callable, Sequence

import pytest

from yumen.catalog import Column, ColumnType, DatasetRegistration, Level, PrivacyUnit

FALSE_FAILURE = 1e-9


def dkw_threshold(n: int, p: float = FALSE_FAILURE) -> float:
    return math.sqrt(math.log(2 / p) / (2 * n))


def ks_distance(samples: Sequence[float], cdf: Callable[[float], float], *, discrete: bool) -> float:
    """sup_x |F_n(x) - F(x)|; for integer samples also at the left limits x-1."""
    xs = sorted(samples)
    n = len(xs)
    d = 0.0
    i = 0
    while i < n:
        j = i
        while j < n and xs[j] == xs[i]:
            j += 1
        x = xs[i]
        below, upto = i / n, j / n  # F_n just below x, and at x
        f_at = cdf(x)
        f_below = cdf(x - 1) if discrete else f_at
        d = max(d, abs(upto - f_at), abs(below - f_below))
        i = j
    return d


def laplace_cdf(scale: float) -> Callable[[float], float]:
    def cdf(x: float) -> float:
        return 0.5 * math.exp(x / scale) if x < 0 else 1 - 0.5 * math.exp(-x / scale)

    return cdf


def discrete_laplace_cdf(scale: float) -> Callable[[float], float]:
    """P(X = x) proportional to exp(-|x| / scale) on the integers (OpenDP's parametrisation)."""
    q = math.exp(-1 / scale)

    def cdf(x: float) -> float:
        x = math.floor(x)
        return q ** (-x) / (1 + q) if x < 0 else 1 - q ** (x + 1) / (1 + q)

    return cdf


def matches(samples: Sequence[float], cdf: Callable[[float], float], *, discrete: bool) -> bool:
    return ks_distance(samples, cdf, discrete=discrete) <= dkw_threshold(len(samples))


@pytest.fixture
def noise_check() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        matches=matches,
        ks_distance=ks_distance,
        threshold=dkw_threshold,
        laplace_cdf=laplace_cdf,
        discrete_laplace_cdf=discrete_laplace_cdf,
    )


def make_registration(*, k: int = 3, categories: Sequence[str] = ("a", "b", "c"), unit: bool = True) -> DatasetRegistration:
    columns = [
        Column(name="cat", type=ColumnType.CATEGORY, categories=tuple(categories)),
        Column(name="v", type=ColumnType.FLOAT, lower=0.0, upper=100.0),
        Column(name="n", type=ColumnType.INT, lower=0, upper=10),
        Column(name="t", type=ColumnType.FLOAT, lower=-5.0, upper=35.0),
    ]
    if unit:
        columns.insert(0, Column(name="pid", type=ColumnType.STRING))
    return DatasetRegistration(
        id="health-visits",
        title="Visits",
        department="health",
        level=Level.L2,
        columns=tuple(columns),
        privacy_unit=PrivacyUnit(column="pid", max_contributions=k) if unit else PrivacyUnit(),
    )


@pytest.fixture
def registration() -> DatasetRegistration:
    return make_registration()


@pytest.fixture
def make_reg() -> Callable[..., DatasetRegistration]:
    return make_registration
