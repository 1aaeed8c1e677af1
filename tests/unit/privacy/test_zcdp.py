"""Zero-concentrated DP: Gaussian mechanisms calibrated to ρ and certified by OpenDP."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import polars as pl
import pytest

from yumen.catalog import PrivacyUnit
from yumen.jobs import Aggregate, OutputRange, Query
from yumen.loss import Accounting
from yumen.privacy import aggregate_blocks, dp_accuracy, dp_query, release_outputs

RHO = Fraction(1, 50)


@pytest.fixture
def zreg(registration):
    unit = dataclasses.replace(registration.privacy_unit, accounting=Accounting.ZCDP, delta=Fraction(1, 10**9))
    return dataclasses.replace(registration, privacy_unit=unit)


def _frame(n: int = 2000) -> pl.LazyFrame:
    return pl.LazyFrame({"pid": [f"p{i}" for i in range(n)], "cat": [("a", "b", "c")[i % 3] for i in range(n)],
                         "v": [float(i % 100) for i in range(n)], "n": [i % 11 for i in range(n)], "t": [1.0] * n})


@pytest.mark.parametrize("query", [
    Query(aggregate=Aggregate.COUNT, group_by="cat"),
    Query(aggregate=Aggregate.SUM, column="v"),
    Query(aggregate=Aggregate.MEAN, column="v", group_by="cat"),
    Query(aggregate=Aggregate.VARIANCE, column="v"),
    Query(aggregate=Aggregate.QUANTILE, column="v", quantile=Fraction(1, 2)),
])
def test_a_zcdp_dataset_releases_with_gaussian_noise_within_its_rho(zreg, query):
    release = dp_query(_frame(), zreg, query, RHO)
    assert release.accounting == "zcdp" and release.epsilon <= RHO
    assert all(c.measure == "zcdp" for c in release.components)
    expected = "noisy-max" if query.aggregate is Aggregate.QUANTILE else "discrete-gaussian"
    assert release.mechanism == expected
    assert "rho" in release.to_dict() and "epsilon" not in release.to_dict()


def test_gaussian_count_noise_has_the_scale_its_rho_implies(zreg):
    # k = 3 rows per unit: L2 sensitivity 3; σ = 3 / √(2ρ) = 15
    release = dp_query(_frame(), zreg, Query(aggregate=Aggregate.COUNT), RHO)
    (c,) = release.components
    assert c.sensitivity == 3.0 and math.isclose(c.scale, 15.0, rel_tol=1e-9)
    forecast = dp_accuracy(zreg, Query(aggregate=Aggregate.COUNT), RHO)
    assert forecast.mechanism == "discrete-gaussian" and 25 <= forecast.half_width <= 31  # ≈ 1.96 σ


def test_algorithm_outputs_under_zcdp_get_gaussian_noise_at_their_range(zreg):
    ranges = (OutputRange(name="a", lower=0, upper=10), OutputRange(name="b", lower=-1, upper=1))
    out = release_outputs({"a": 4.0, "b": 0.5}, ranges, RHO, accounting=Accounting.ZCDP)
    assert out.mechanism == "gaussian" and out.epsilon <= RHO and out.accounting == "zcdp"
    # each output gets ρ/2 at its width: σ_a = 10 / √ρ
    assert math.isclose(out.noise_scale["a"], 10 / math.sqrt(float(RHO)), rel_tol=1e-6)
    blocks = aggregate_blocks([{"a": 1.0, "b": 0.0}] * 10, ranges, RHO, accounting=Accounting.ZCDP)
    assert blocks.noise_scale["a"] < out.noise_scale["a"] / 9  # the average over 10 blocks: 1/10 of the range


def test_a_pure_registration_still_gets_laplace_noise(registration):
    release = dp_query(_frame(), registration, Query(aggregate=Aggregate.COUNT), Fraction(1))
    assert release.accounting == "pure" and release.mechanism == "geometric"
    assert PrivacyUnit().accounting is Accounting.PURE
