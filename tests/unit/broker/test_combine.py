"""Result assembly at the broker: sums of parts, means, minimum group size."""

from yumen.broker._assembly import final_values
from yumen.broker._store import JobRecord
from yumen.jobs import JobState


def _job(aggregate: str, group_by: str = "region", k: int = 5, datasets=("a",)) -> JobRecord:
    return JobRecord(
        job_id="j", operator="op", license="L", request_digest="d",
        request={"datasets": list(datasets), "query": {"aggregate": aggregate, "column": "x", "group_by": group_by},
                 "purpose": "research", "tier": "query", "epsilon": "1"},
        algorithm_source=b"", state=JobState.RUNNING, message="", created_ms=0, updated_ms=0,
        decision={"per_dataset": {d: {"obligations": {"min_group_size": k}} for d in datasets}},
    )


def _v(name, group, value, ci=1.0):
    return {"name": name, "group": group, "value": value, "noise_scale": 1.0, "ci95": ci}


def test_groups_whose_noisy_count_is_below_the_minimum_are_suppressed():
    values, suppressed = final_values(_job("count"), [_v("count", "small", 3.2), _v("count", "big", 120.0)])
    assert suppressed == ["small"] and [v["group"] for v in values] == ["big"]


def test_sum_released_as_parts_keeps_only_the_sum_of_large_groups():
    parts = [_v("sum", "small", 10.0), _v("sum", "big", 900.0), _v("count", "small", 1.0), _v("count", "big", 90.0)]
    values, suppressed = final_values(_job("sum"), parts)
    assert suppressed == ["small"] and values == [_v("sum", "big", 900.0)]


def test_mean_from_parts_divides_and_bounds_the_error():
    parts = [_v("sum", "g", 1000.0, ci=100.0), _v("count", "g", 100.0, ci=10.0)]
    (v,), _ = final_values(_job("mean", k=0), parts)
    assert v["name"] == "mean" and v["value"] == 10.0
    assert abs(v["ci95"] - (100.0 + 10.0 * 10.0) / 90.0) < 1e-9


def test_no_minimum_means_nothing_is_suppressed():
    values, suppressed = final_values(_job("count", k=0), [_v("count", "small", 0.5)])
    assert suppressed == [] and len(values) == 1


def test_histogram_bins_below_the_minimum_are_suppressed_by_their_own_noisy_counts():
    job = _job("histogram", group_by="")
    values, suppressed = final_values(job, [_v("histogram", "[0,10)", 2.0), _v("histogram", "[10,20]", 80.0)])
    assert suppressed == ["[0,10)"] and [v["group"] for v in values] == ["[10,20]"]


def test_variance_groups_are_suppressed_by_the_count_released_beside_them():
    parts = [_v("variance", "small", 4.0), _v("variance", "big", 9.0), _v("count", "small", 2.0),
             _v("count", "big", 300.0)]
    values, suppressed = final_values(_job("variance"), parts)
    assert suppressed == ["small"] and values == [_v("variance", "big", 9.0)]
