"""release_outputs and sample-and-aggregate: clamping, refusals, ε split, and a leaking algorithm."""

from __future__ import annotations

import math
from fractions import Fraction

import polars as pl
import pytest

from yumen.errors import Code, YumenError
from yumen.jobs import OutputRange
from yumen.privacy import LAPLACE, aggregate_blocks, partition_blocks, release_outputs

RANGES = (OutputRange(name="mean_temp", lower=-40.0, upper=50.0), OutputRange(name="share", lower=0.0, upper=1.0))


def test_outputs_are_clamped_to_their_declared_ranges_before_noise():
    r = release_outputs({"mean_temp": 1e9, "share": -3.0}, RANGES, Fraction(1))
    assert r.exact == {"mean_temp": 50.0, "share": 0.0}
    assert r.mechanism == LAPLACE


def test_output_noise_is_calibrated_to_the_range_width_with_epsilon_split():
    r = release_outputs({"mean_temp": 0.0, "share": 0.5}, RANGES, Fraction(1, 2))
    assert {c.name: c.sensitivity for c in r.components} == {"output:mean_temp": 90.0, "output:share": 1.0}
    assert r.noise_scale == {"mean_temp": pytest.approx(90.0 * 4), "share": pytest.approx(4.0)}
    assert r.epsilon == Fraction(1, 2)
    assert all(c.epsilon == Fraction(1, 4) for c in r.components)


@pytest.mark.parametrize(
    "outputs, message",
    [
        ({"mean_temp": 1.0, "share": 0.5, "extra": 1.0}, "undeclared outputs: extra"),
        ({"mean_temp": 1.0}, "did not return declared outputs: share"),
        ({"mean_temp": math.nan, "share": 0.5}, "not finite"),
        ({"mean_temp": math.inf, "share": 0.5}, "not finite"),
        ({"mean_temp": "7", "share": 0.5}, "not a number"),
    ],
)
def test_bad_outputs_are_refused(outputs, message):
    with pytest.raises(YumenError) as err:
        release_outputs(outputs, RANGES, Fraction(1))
    assert err.value.code is Code.INVALID_ARGUMENT
    assert message in err.value.message


def test_block_outputs_are_clamped_averaged_and_noised_at_width_over_k():
    blocks = [{"mean_temp": 100.0, "share": 0.5}] + [{"mean_temp": 10.0, "share": 0.5}] * 9
    r = aggregate_blocks(blocks, RANGES, Fraction(2))
    assert r.exact["mean_temp"] == pytest.approx((50.0 + 9 * 10.0) / 10)
    sens = {c.name: c.sensitivity for c in r.components}
    assert sens["output:mean_temp"] == pytest.approx(9.0, rel=1e-12)
    assert sens["output:mean_temp"] >= 9.0  # never below the exact (U - L) / k
    assert r.epsilon == Fraction(2)


def test_broken_block_outputs_count_as_the_midpoint_instead_of_failing():
    blocks = [{"mean_temp": math.nan}, {"share": 0.25, "junk": 1.0}, {"mean_temp": 5.0, "share": 0.75}]
    r = aggregate_blocks(blocks, RANGES, Fraction(1))
    assert r.exact["mean_temp"] == pytest.approx((5.0 + 5.0 + 5.0) / 3)
    assert r.exact["share"] == pytest.approx((0.5 + 0.25 + 0.75) / 3)


def test_zero_blocks_are_refused():
    with pytest.raises(YumenError, match="between 1 and"):
        aggregate_blocks([], RANGES, Fraction(1))


def _population(with_target: bool) -> pl.LazyFrame:
    ids = [f"p{i:03d}" for i in range(60)]
    rows = {"pid": ids * 2, "cat": "a", "v": 0.0, "n": 0, "t": 0.0}
    frame = pl.DataFrame(rows)
    if with_target:
        target = pl.DataFrame({"pid": ["target"] * 2, "cat": "a", "v": 1000.0, "n": 0, "t": 0.0})
        frame = pl.concat([frame, target])
    return frame.lazy()


def _leaky_algorithm(block: pl.DataFrame) -> dict[str, float]:
    """Written to leak: the maximum of a column only the target has a large value in."""
    return {"leak": float(block.get_column("v").max() or 0.0)}


def _sample_and_aggregate(frame: pl.LazyFrame, reg, trial: int, k: int, eps: Fraction) -> tuple[float, float]:
    seed = trial.to_bytes(8, "big") * 4  # a fresh per-job secret for every trial
    blocks = partition_blocks(frame, reg, k, seed)
    outputs = [_leaky_algorithm(b) if b.height else {"leak": 0.0} for b in blocks]
    r = aggregate_blocks(outputs, [OutputRange(name="leak", lower=0.0, upper=1000.0)], eps)
    return r.values["leak"], r.exact["leak"]


def test_an_algorithm_written_to_leak_one_person_gets_back_only_noise(make_reg):
    """ε-DP says P[S | target in] <= e^ε P[S | target out] for every event S.

    We run 600 trials on each side and test the events {output > c} for several c. The check
    compares a lower confidence bound on one probability with e^ε times an upper bound on the
    other (5 standard errors each side), so a correct mechanism fails with negligible
    probability. The same check on the noiseless block average (what a sandbox without DP
    would return) fails outright, which shows the test can see a leak.
    """
    reg = make_reg(k=2)
    eps, k, trials = Fraction(1), 10, 600
    runs_in = [_sample_and_aggregate(_population(True), reg, t, k, eps) for t in range(trials)]
    runs_out = [_sample_and_aggregate(_population(False), reg, t + 10**6, k, eps) for t in range(trials)]
    # before noise the target's block shows 1000, so the block average is 100 instead of 0
    assert {e for _, e in runs_in} == {100.0} and {e for _, e in runs_out} == {0.0}
    with_target = [v for v, _ in runs_in]
    without = [v for v, _ in runs_out]

    def bounded(a: list[float], b: list[float], event) -> bool:
        pa = sum(map(event, a)) / trials
        pb = sum(map(event, b)) / trials
        se = lambda p: math.sqrt(max(p * (1 - p), 1 / trials) / trials)  # noqa: E731
        return pa - 5 * se(pa) <= math.exp(float(eps)) * (pb + 5 * se(pb))

    thresholds = [0.0, 50.0, 100.0, 200.0]
    for c in thresholds:
        above = lambda x, c=c: x > c  # noqa: E731
        below = lambda x, c=c: x <= c  # noqa: E731
        assert bounded(with_target, without, above) and bounded(without, with_target, below)
    # the noiseless version separates the two worlds perfectly: the leak is real
    leak_in = [1000.0 / k] * trials
    leak_out = [0.0] * trials
    assert not bounded(leak_in, leak_out, lambda x: x > 50.0)


def test_without_sample_and_aggregate_the_leak_is_total():
    assert _leaky_algorithm(_population(True).collect()) == {"leak": 1000.0}
    assert _leaky_algorithm(_population(False).collect()) == {"leak": 0.0}
