"""dp_query: contribution bounding, clamping, public key sets, ε accounting, accuracy."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import polars as pl
import pytest

from yumen.errors import Code, YumenError
from yumen.jobs import Aggregate, Query
from yumen.privacy import (
    NOISY_MAX,
    UNGROUPED,
    BoundedFrame,
    DPRelease,
    Filter,
    FilterOp,
    QuerySpec,
    Statistic,
    bound_contributions,
    dp_accuracy,
    dp_queries,
    dp_query,
)

EPS = Fraction(1)


def hostile_frame() -> pl.LazyFrame:
    """One unit with 10,000 rows of huge values; 100 ordinary units with one row each."""
    pid = ["mallory"] * 10_000 + [f"p{i}" for i in range(100)]
    v = [1e12] * 10_000 + [float(i % 100) for i in range(100)]
    cat = ["a"] * 10_000 + [("a", "b", "zz")[i % 3] for i in range(100)]
    n = [10**9] * 10_000 + [i % 11 for i in range(100)]
    t = [-1e9] * 10_000 + [20.0] * 100
    return pl.LazyFrame({"pid": pid, "cat": cat, "v": v, "n": n, "t": t})


def test_count_truncates_a_unit_with_many_rows_to_max_contributions(registration):
    release = dp_query(hostile_frame(), registration, Query(aggregate=Aggregate.COUNT), EPS)
    assert release.exact[UNGROUPED] == 3 + 100  # mallory keeps k = 3 rows
    assert release.components[0].sensitivity == 3.0


def test_sum_clamps_values_far_beyond_the_registered_bounds(registration):
    release = dp_query(hostile_frame(), registration, Query(aggregate=Aggregate.SUM, column="v"), EPS)
    expected = 3 * 100.0 + sum(float(i % 100) for i in range(100))
    assert release.exact[UNGROUPED] == pytest.approx(expected, abs=1e-4)
    assert release.components[0].sensitivity == pytest.approx(3 * 100.0, rel=1e-9)


def test_negative_bound_drives_the_sum_sensitivity(registration):
    release = dp_query(hostile_frame(), registration, Query(aggregate=Aggregate.SUM, column="t"), EPS)
    assert release.exact[UNGROUPED] == pytest.approx(3 * -5.0 + 100 * 20.0, abs=1e-4)
    assert release.components[0].sensitivity == pytest.approx(3 * 35.0, rel=1e-6)


def test_integer_sum_is_exact_on_the_clamped_values(registration):
    release = dp_query(hostile_frame(), registration, Query(aggregate=Aggregate.SUM, column="n"), EPS)
    assert release.exact[UNGROUPED] == 3 * 10 + sum(i % 11 for i in range(100))
    assert release.components[0].sensitivity == 30.0
    assert release.noise_scale[UNGROUPED] == 30.0


def test_mean_uses_truncated_clamped_rows_and_splits_epsilon(registration):
    release = dp_query(hostile_frame(), registration, Query(aggregate=Aggregate.MEAN, column="v"), EPS)
    expected = (3 * 100.0 + sum(float(i % 100) for i in range(100))) / 103
    assert release.exact[UNGROUPED] == pytest.approx(expected, abs=1e-6)
    assert [c.name for c in release.components] == ["count", "centered_sum"]
    assert all(c.epsilon <= Fraction(1, 2) for c in release.components)
    assert 0.0 <= release.value <= 100.0


def test_group_by_releases_exactly_the_declared_categories(registration):
    release = dp_query(hostile_frame(), registration, Query(aggregate=Aggregate.COUNT, group_by="cat"), EPS)
    assert list(release.values) == ["a", "b", "c"]
    # "zz" is undeclared and dropped; "c" has no rows but is released with noise
    assert release.exact["a"] == 3 + 34
    assert release.exact["b"] == 33
    assert release.exact["c"] == 0
    assert release.components[0].sensitivity == 3.0  # one unit, k rows, over all groups


def test_group_keys_do_not_depend_on_which_values_occur(make_reg):
    reg = make_reg(categories=("x", "y"))
    empty = pl.LazyFrame({"pid": ["p"], "cat": ["nope"], "v": [1.0], "n": [1], "t": [1.0]})
    release = dp_query(empty, reg, Query(aggregate=Aggregate.SUM, column="v", group_by="cat"), EPS)
    assert list(release.values) == ["x", "y"]
    assert release.exact == {"x": 0.0, "y": 0.0}


def test_group_by_a_numeric_column_is_refused(registration):
    with pytest.raises(YumenError) as err:
        dp_query(hostile_frame(), registration, Query(aggregate=Aggregate.COUNT, group_by="v"), EPS)
    assert err.value.code is Code.INVALID_ARGUMENT
    assert "category" in err.value.message


def test_undeclared_column_is_refused(registration):
    with pytest.raises(YumenError) as err:
        dp_query(hostile_frame(), registration, Query(aggregate=Aggregate.SUM, column="salary"), EPS)
    assert "no column 'salary'" in err.value.message


def test_aggregating_the_unit_identifier_is_refused(registration):
    with pytest.raises(YumenError, match="privacy unit"):
        dp_query(hostile_frame(), registration, QuerySpec(statistic=Statistic.COUNT, column="pid"), EPS)


@pytest.mark.parametrize("eps", [Fraction(1, 3), Fraction(7, 10), Fraction(2), Fraction(1, 1000)])
@pytest.mark.parametrize(
    "spec",
    [
        QuerySpec(statistic=Statistic.COUNT),
        QuerySpec(statistic=Statistic.SUM, column="v", group_by="cat"),
        QuerySpec(statistic=Statistic.MEAN, column="t"),
        QuerySpec(statistic=Statistic.VARIANCE, column="v"),
        QuerySpec(statistic=Statistic.HISTOGRAM, column="n", bins=5),
        QuerySpec(statistic=Statistic.QUANTILE, column="t", quantile=Fraction(1, 2), group_by="cat"),
    ],
)
def test_epsilon_spent_is_exact_and_never_above_the_request(registration, spec, eps):
    release = dp_query(hostile_frame(), registration, spec, eps)
    assert isinstance(release.epsilon, Fraction)
    assert release.epsilon <= eps
    assert release.epsilon == sum(c.epsilon for c in release.components)
    assert release.epsilon >= eps * (1 - Fraction(1, 10**12))  # nothing wasted beyond float rounding
    factor = 2 if spec.statistic is Statistic.QUANTILE else 1  # noisy max costs 2 d / scale
    for c in release.components:
        assert c.scale == pytest.approx(factor * c.sensitivity / float(eps / len(release.components)), rel=1e-9)


def test_float_epsilon_is_refused(registration):
    with pytest.raises(YumenError, match="exact Fraction"):
        dp_query(hostile_frame(), registration, Query(aggregate=Aggregate.COUNT), 0.5)  # type: ignore[arg-type]


def test_forecast_equals_the_release_accuracy_for_count_and_sum(registration):
    for q in (Query(aggregate=Aggregate.COUNT, group_by="cat"), Query(aggregate=Aggregate.SUM, column="v")):
        forecast = dp_accuracy(registration, q, Fraction(1, 2))
        release = dp_query(hostile_frame(), registration, q, Fraction(1, 2))
        assert forecast.components == release.components
        assert forecast.epsilon == release.epsilon
        assert all(a == forecast.half_width for a in release.accuracy.values())
        assert list(forecast.keys) == list(release.values)


def test_forecast_of_a_mean_shrinks_with_more_rows(registration):
    forecast = dp_accuracy(registration, Query(aggregate=Aggregate.MEAN, column="v"), Fraction(1))
    assert forecast.half_width is None
    small, large = forecast.half_width_at(100), forecast.half_width_at(100_000)
    assert large < small <= 100.0
    assert large == pytest.approx(small / 1000, rel=0.05)


def test_count_interval_covers_the_truth_at_least_95_percent(make_reg):
    cats = tuple(f"c{i}" for i in range(500))
    reg = make_reg(categories=cats)
    frame = pl.LazyFrame({"pid": ["p1"], "cat": ["c1"], "v": [1.0], "n": [1], "t": [1.0]})
    covered = total = 0
    for _ in range(4):
        r = dp_query(frame, reg, Query(aggregate=Aggregate.COUNT, group_by="cat"), Fraction(1, 2))
        covered += sum(abs(r.values[c] - r.exact[c]) <= r.accuracy[c] for c in cats)
        total += len(cats)
    # true coverage >= 0.95; 0.92 is 6 standard deviations below it at n = 2000
    assert covered / total >= 0.92


def test_mean_interval_covers_the_truth(make_reg):
    cats = tuple(f"c{i}" for i in range(200))
    reg = make_reg(categories=cats, unit=False)
    rng = np.random.default_rng(7)  # data only; noise comes from OpenDP
    frame = pl.LazyFrame({"cat": rng.choice(cats, 20_000), "v": rng.uniform(0, 100, 20_000), "n": 1, "t": 1.0})
    covered = total = 0
    for _ in range(5):
        r = dp_query(frame, reg, Query(aggregate=Aggregate.MEAN, column="v", group_by="cat"), Fraction(1))
        covered += sum(abs(r.values[c] - r.exact[c]) <= r.accuracy[c] for c in cats)
        total += len(cats)
    assert covered / total >= 0.92


def test_bounded_frame_gives_the_same_exact_values_as_a_lazy_frame(registration):
    bounded = bound_contributions(hostile_frame(), registration)
    assert isinstance(bounded, BoundedFrame) and bounded.rows == 103
    q = Query(aggregate=Aggregate.MEAN, column="v", group_by="cat")
    assert dp_query(bounded, registration, q, EPS).exact == dp_query(hostile_frame(), registration, q, EPS).exact


def test_bounded_frame_for_another_registration_is_refused(registration, make_reg):
    bounded = bound_contributions(hostile_frame(), registration)
    with pytest.raises(YumenError, match="another registration"):
        dp_query(bounded, make_reg(k=5), Query(aggregate=Aggregate.COUNT), EPS)


def test_truncation_keeps_the_first_rows_in_frame_order_and_drops_rows_without_an_id(make_reg):
    reg = make_reg(k=2)
    frame = pl.LazyFrame({"pid": ["u", "w", "u", "u", None, None, None], "cat": "a",
                          "v": [1.0, 50.0, 2.0, 99.0, 10.0, 10.0, 10.0], "n": 1, "t": 1.0})
    release = dp_query(frame, reg, Query(aggregate=Aggregate.SUM, column="v"), EPS)
    # u keeps 1.0 and 2.0; w keeps 50.0; the rows without an id are dropped
    assert release.exact[UNGROUPED] == pytest.approx(1.0 + 2.0 + 50.0, abs=1e-5)


def test_filters_apply_to_declared_columns(registration):
    spec = QuerySpec(
        statistic=Statistic.COUNT,
        filters=(Filter(column="cat", op=FilterOp.IN, value=("a", "b")), Filter(column="v", op=FilterOp.GE, value=50.0)),
    )
    release = dp_query(hostile_frame(), registration, spec, EPS)
    ordinary = [(("a", "b", "zz")[i % 3], float(i % 100)) for i in range(100)]
    assert release.exact[UNGROUPED] == 3 + sum(1 for c, v in ordinary if c in ("a", "b") and v >= 50)


@pytest.mark.parametrize(
    "flt",
    [
        Filter(column="pid", op=FilterOp.EQ, value="mallory"),
        Filter(column="cat", op=FilterOp.EQ, value="zz"),
        Filter(column="v", op=FilterOp.IN, value=("1",)),
    ],
)
def test_filters_that_target_identifiers_or_undeclared_values_are_refused(registration, flt):
    with pytest.raises(YumenError) as err:
        dp_query(hostile_frame(), registration, QuerySpec(statistic=Statistic.COUNT, filters=(flt,)), EPS)
    assert err.value.code is Code.INVALID_ARGUMENT


def test_variance_exact_matches_the_clamped_population_variance(make_reg):
    reg = make_reg(unit=False)
    rng = np.random.default_rng(3)
    v = rng.normal(50, 30, 5_000)
    frame = pl.LazyFrame({"cat": "a", "v": v, "n": 1, "t": 1.0})
    release = dp_query(frame, reg, QuerySpec(statistic=Statistic.VARIANCE, column="v"), EPS)
    assert release.exact[UNGROUPED] == pytest.approx(float(np.var(np.clip(v, 0, 100))), rel=1e-6)
    assert 0.0 <= release.value <= 50.0**2


def test_numeric_histogram_has_public_bins_and_counts_clamped_values(registration):
    release = dp_query(hostile_frame(), registration, QuerySpec(statistic=Statistic.HISTOGRAM, column="n", bins=5), EPS)
    assert list(release.values) == ["[0,2)", "[2,4)", "[4,6)", "[6,8)", "[8,10]"]
    ordinary = [i % 11 for i in range(100)]
    assert release.exact["[8,10]"] == 3 + sum(1 for x in ordinary if x >= 8)
    assert sum(release.exact.values()) == 103


def test_the_public_form_of_a_release_carries_no_pre_noise_value(registration):
    release = dp_query(hostile_frame(), registration, Query(aggregate=Aggregate.SUM, column="n"), EPS)
    public = release.to_dict()
    assert "exact" not in public and "exact" not in repr(release)
    assert public["values"][UNGROUPED] == release.value
    assert public["epsilon"] == "1/1"


def test_releases_are_read_only(registration):
    release = dp_query(hostile_frame(), registration, Query(aggregate=Aggregate.COUNT), EPS)
    with pytest.raises(TypeError):
        release.values[UNGROUPED] = 0.0  # type: ignore[index]
    assert isinstance(release, DPRelease)


def test_missing_source_column_fails_the_job(registration):
    frame = pl.LazyFrame({"pid": ["p"], "cat": ["a"]})
    with pytest.raises(YumenError) as err:
        dp_query(frame, registration, Query(aggregate=Aggregate.SUM, column="v"), EPS)
    assert err.value.code is Code.JOB_FAILED


def test_nan_and_null_values_are_dropped_not_summed(make_reg):
    reg = make_reg(unit=False)
    frame = pl.LazyFrame({"cat": "a", "v": [1.0, math.nan, None, 3.0], "n": 1, "t": 1.0})
    release = dp_query(frame, reg, Query(aggregate=Aggregate.MEAN, column="v"), EPS)
    assert release.exact[UNGROUPED] == pytest.approx(2.0, abs=1e-6)


def test_quantile_exact_is_the_candidate_at_the_target_rank(make_reg):
    reg = make_reg(unit=False)
    frame = pl.LazyFrame({"cat": "a", "v": 1.0, "n": [i % 11 for i in range(1100)], "t": 1.0})
    median = QuerySpec(statistic=Statistic.QUANTILE, column="n", quantile=Fraction(1, 2))
    top = QuerySpec(statistic=Statistic.QUANTILE, column="n", quantile=Fraction(9, 10))
    r = dp_query(frame, reg, median, Fraction(1))
    assert r.exact[UNGROUPED] == 5.0 and r.mechanism == NOISY_MAX and r.accuracy_unit == "rank"
    assert dp_query(frame, reg, top, Fraction(1)).exact[UNGROUPED] == 9.0
    # with a large ε the selection is the exact candidate or a neighbour
    assert abs(dp_query(frame, reg, median, Fraction(50)).value - 5.0) <= 1.0


def test_quantile_rank_error_stays_within_the_reported_bound(make_reg):
    reg = make_reg(unit=False)
    values = [float(i) / 100 for i in range(3500)]  # t in [0, 35), one row per value
    frame = pl.LazyFrame({"cat": "a", "v": 1.0, "n": 1, "t": values})
    spec = QuerySpec(statistic=Statistic.QUANTILE, column="t", quantile=Fraction(1, 4))
    forecast = dp_accuracy(reg, spec, Fraction(1, 2))
    misses = 0
    for _ in range(40):
        r = dp_query(frame, reg, spec, Fraction(1, 2))
        rank = sum(v < r.value for v in values)
        # + 8 rows: two candidate steps (40 / 1024 value units, 100 rows per unit) for rounding and ties
        misses += abs(rank - 0.25 * len(values)) > r.accuracy[UNGROUPED] + 8
        assert r.accuracy[UNGROUPED] == forecast.half_width
    assert misses <= 8  # the bound holds with >= 95 %; 8 of 40 would be a 1e-4 event


def test_quantile_needs_an_exact_fraction_in_the_open_unit_interval():
    for bad in (Fraction(0), Fraction(1), 0.5, Fraction(1, 1001)):
        with pytest.raises(YumenError):
            QuerySpec(statistic=Statistic.QUANTILE, column="t", quantile=bad)  # type: ignore[arg-type]


def test_several_queries_share_passes_and_compose_exactly(registration):
    queries = [
        Query(aggregate=Aggregate.COUNT, group_by="cat"),
        Query(aggregate=Aggregate.SUM, column="v", group_by="cat"),
        Query(aggregate=Aggregate.MEAN, column="v", group_by="cat"),
        QuerySpec(statistic=Statistic.MEAN, column="t"),
    ]
    eps = [Fraction(1, 10), Fraction(2, 10), Fraction(3, 10), Fraction(4, 10)]
    together = dp_queries(hostile_frame(), registration, queries, eps)
    alone = [dp_query(hostile_frame(), registration, q, e) for q, e in zip(queries, eps)]
    assert [r.exact for r in together] == [r.exact for r in alone]
    assert sum(r.epsilon for r in together) <= 1
    assert [r.epsilon for r in together] == [r.epsilon for r in alone]
    with pytest.raises(YumenError, match="one ε per query"):
        dp_queries(hostile_frame(), registration, queries, eps[:2])


def test_a_person_without_a_unit_id_moves_the_histogram_by_at_most_k(registration):
    """Rows without an id are dropped: they used to form one shared unit, so a person without
    an id could swap that unit's k kept rows for theirs and move a histogram by 2k."""
    k = registration.privacy_unit.max_contributions
    others = {"pid": [None] * k + [f"p{i}" for i in range(20)], "cat": ["a"] * k + ["b"] * 20,
              "v": [1.0] * (k + 20), "n": [1] * (k + 20), "t": [0.0] * (k + 20)}
    newcomer = {"pid": [None] * k, "cat": ["c"] * k, "v": [1.0] * k, "n": [1] * k, "t": [0.0] * k}
    without = pl.DataFrame(others, schema_overrides={"pid": pl.String})
    with_person = pl.concat([pl.DataFrame(newcomer, schema_overrides={"pid": pl.String}), without])
    query = Query(aggregate=Aggregate.HISTOGRAM, column="cat")
    a = dp_query(without.lazy(), registration, query, EPS).exact
    b = dp_query(with_person.lazy(), registration, query, EPS).exact
    assert sum(abs(a[g] - b[g]) for g in a) <= k
    bounded = bound_contributions(with_person, registration)
    assert bounded.rows_without_unit == 2 * k


def test_rows_without_a_unit_id_are_left_out_of_every_block():
    from yumen.privacy import partition_blocks
    from tests.unit.privacy.conftest import make_registration

    reg = make_registration(k=3)
    frame = pl.DataFrame({"pid": [None, "a", None, "b"], "cat": ["a"] * 4, "v": [1.0] * 4, "n": [1] * 4, "t": [0.0] * 4},
                         schema_overrides={"pid": pl.String})
    blocks = partition_blocks(frame, reg, 3, b"k" * 16)
    assert sorted(p for b in blocks for p in b["pid"].to_list()) == ["a", "b"]
