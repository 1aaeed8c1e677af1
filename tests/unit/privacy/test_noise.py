"""The noise each mechanism adds has exactly the claimed scale, and comes only from OpenDP."""

from __future__ import annotations

import pathlib
import random
import re
from fractions import Fraction

import numpy as np
import opendp.prelude as dp
import polars as pl
import pytest

import yumen.privacy
from yumen.jobs import Aggregate, OutputRange, Query
from yumen.privacy import aggregate_blocks, dp_query, release_outputs

N_GROUPS = 1000
CALLS = 4  # 4,000 noise draws per check


@pytest.fixture
def wide(make_reg):
    return make_reg(categories=tuple(f"g{i}" for i in range(N_GROUPS)), k=2)


@pytest.fixture
def frame():
    rng = np.random.default_rng(11)  # data only
    return pl.LazyFrame(
        {
            "pid": [f"p{i}" for i in range(3000)],
            "cat": rng.choice([f"g{i}" for i in range(N_GROUPS)], 3000),
            "v": rng.uniform(-50, 150, 3000),
            "n": rng.integers(-5, 15, 3000),
            "t": 1.0,
        }
    )


def _query_noise(frame, reg, query, eps):
    draws, scales = [], set()
    for _ in range(CALLS):
        r = dp_query(frame, reg, query, eps)
        draws += [r.values[k] - r.exact[k] for k in r.values]
        scales |= set(r.noise_scale.values())
    assert len(scales) == 1
    return draws, scales.pop()


def test_grouped_count_noise_is_discrete_laplace_at_k_over_epsilon(frame, wide, noise_check):
    draws, scale = _query_noise(frame, wide, Query(aggregate=Aggregate.COUNT, group_by="cat"), Fraction(1, 2))
    assert scale == 2 / 0.5  # k / ε
    assert all(d == int(d) for d in draws)
    assert noise_check.matches(draws, noise_check.discrete_laplace_cdf(scale), discrete=True)


def test_integer_sum_noise_is_discrete_laplace_at_k_times_bound_over_epsilon(frame, wide, noise_check):
    draws, scale = _query_noise(frame, wide, Query(aggregate=Aggregate.SUM, column="n", group_by="cat"), Fraction(2))
    assert scale == 2 * 10 / 2
    assert noise_check.matches(draws, noise_check.discrete_laplace_cdf(scale), discrete=True)


def test_float_sum_noise_is_laplace_at_k_times_bound_over_epsilon(frame, wide, noise_check):
    draws, scale = _query_noise(frame, wide, Query(aggregate=Aggregate.SUM, column="v", group_by="cat"), Fraction(1))
    assert scale == pytest.approx(2 * 100.0, rel=1e-6)
    # a discrete Laplace on a 2^-23 lattice: indistinguishable from the continuous one at this n
    assert noise_check.matches(draws, noise_check.laplace_cdf(scale), discrete=False)


def test_output_noise_is_laplace_at_width_times_outputs_over_epsilon(noise_check):
    ranges = [OutputRange(name=f"o{i}", lower=-1.0 * i, upper=1.0 + i) for i in range(200)]
    outputs = {r.name: 0.5 for r in ranges}
    z = []
    for _ in range(20):
        r = release_outputs(outputs, ranges, Fraction(4))
        for rng in ranges:
            assert r.noise_scale[rng.name] == pytest.approx((rng.upper - rng.lower) * 200 / 4)
            z.append((r.values[rng.name] - r.exact[rng.name]) / r.noise_scale[rng.name])
    assert noise_check.matches(z, noise_check.laplace_cdf(1.0), discrete=False)


def test_block_average_noise_is_laplace_at_width_over_k_blocks(noise_check):
    ranges = [OutputRange(name=f"o{i}", lower=0.0, upper=10.0) for i in range(100)]
    blocks = [{r.name: float(b) for r in ranges} for b in range(20)]
    z = []
    for _ in range(40):
        r = aggregate_blocks(blocks, ranges, Fraction(10))
        for rng in ranges:
            assert r.noise_scale[rng.name] == pytest.approx(10.0 / 20 * 100 / 10)
            assert r.exact[rng.name] == pytest.approx((55 + 9 * 10) / 20)  # clamped to [0, 10]
            z.append((r.values[rng.name] - r.exact[rng.name]) / r.noise_scale[rng.name])
    assert noise_check.matches(z, noise_check.laplace_cdf(1.0), discrete=False)


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_the_checker_rejects_a_mechanism_whose_scale_is_wrong(noise_check, factor):
    dp.enable_features("contrib")
    claimed = 4.0
    wrong = dp.m.make_geometric(
        dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l1_distance(T=dp.i64), scale=claimed * factor
    )
    draws = wrong([0] * 4000)
    assert not noise_check.matches(draws, noise_check.discrete_laplace_cdf(claimed), discrete=True)
    right = dp.m.make_geometric(dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l1_distance(T=dp.i64), scale=claimed)
    assert noise_check.matches(right([0] * 4000), noise_check.discrete_laplace_cdf(claimed), discrete=True)


def _forbid_python_and_numpy_randomness(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("noise must come from OpenDP, not from random or numpy.random")

    for name in dir(np.random):
        if not name.startswith("_") and callable(getattr(np.random, name)):
            monkeypatch.setattr(np.random, name, boom)
    for name in ("random", "uniform", "gauss", "normalvariate", "expovariate", "randint", "choice", "shuffle", "getrandbits"):
        monkeypatch.setattr(random, name, boom)
        monkeypatch.setattr(random.Random, name, boom)


def test_releases_draw_no_python_or_numpy_randomness(monkeypatch, frame, wide):
    _forbid_python_and_numpy_randomness(monkeypatch)
    with pytest.raises(AssertionError):  # the trap is armed
        np.random.default_rng()
    r = dp_query(frame, wide, Query(aggregate=Aggregate.MEAN, column="v", group_by="cat"), Fraction(1))
    assert r.values != r.exact  # noise was still added, by OpenDP
    ranges = [OutputRange(name="x", lower=0.0, upper=1.0)]
    assert release_outputs({"x": 0.5}, ranges, Fraction(1)).values["x"] != 0.5
    assert aggregate_blocks([{"x": 0.5}] * 5, ranges, Fraction(1)).values["x"] != 0.5


BANNED = (
    r"^\s*import random\b",
    r"^\s*from random\b",
    r"^\s*import secrets\b",
    r"\bnp\.random\.",
    r"numpy\.random\.\w+\(",
    r"^\s*from numpy(\.random)? import .*random",
    r"urandom\(",
)


def test_privacy_sources_never_import_a_non_opendp_random_source():
    root = pathlib.Path(yumen.privacy.__file__).parent
    sources = {p.name: p.read_text() for p in root.glob("*.py")}
    assert "_query.py" in sources
    for name, text in sources.items():
        for banned in BANNED:
            assert not re.search(banned, text, re.MULTILINE), f"{name} matches {banned}"
