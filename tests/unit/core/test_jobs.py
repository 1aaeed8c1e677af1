from fractions import Fraction

import pytest

from yumen.errors import Code, YumenError
from yumen.jobs import Aggregate, Algorithm, JobRequest, OutputRange, Purpose, Query, Tier, format_epsilon, parse_epsilon


def test_epsilon_parses_exactly_so_sums_do_not_drift():
    assert parse_epsilon("0.1") + parse_epsilon("0.2") == parse_epsilon("0.3")
    assert sum([parse_epsilon("0.1")] * 10) == 1


@pytest.mark.parametrize("bad", ["-1", "0", "abc", "1e-3", "0.1234567891", ""])
def test_epsilon_rejects_what_is_not_a_positive_decimal(bad):
    with pytest.raises(YumenError) as e:
        parse_epsilon(bad)
    assert e.value.code is Code.INVALID_ARGUMENT


def test_epsilon_float_is_refused():
    with pytest.raises(YumenError):
        parse_epsilon(0.5)  # type: ignore[arg-type]


def test_format_epsilon_rounds_up_never_down():
    assert format_epsilon(Fraction(1, 3)) == "0.333333334"
    assert format_epsilon(Fraction(1, 2)) == "0.5"
    assert format_epsilon(Fraction(3)) == "3"


def test_job_request_digest_ignores_nothing_that_matters():
    base = dict(job_id="j1", datasets=("d",), tier=Tier.QUERY, purpose=Purpose.RESEARCH, epsilon=Fraction(1, 2),
                query=Query(aggregate=Aggregate.COUNT))
    a = JobRequest(**base)
    b = JobRequest(**{**base, "epsilon": Fraction(1, 4)})
    assert a.digest() != b.digest()
    assert a.digest() == JobRequest(**base).digest()


def test_algorithm_requires_declared_output_ranges():
    with pytest.raises(YumenError, match="declare its outputs"):
        Algorithm(source=b"print(1)", outputs=())
    with pytest.raises(YumenError, match="finite interval"):
        OutputRange(name="x", lower=1, upper=1)


def test_query_job_cannot_carry_an_algorithm():
    with pytest.raises(YumenError):
        JobRequest(job_id="j", datasets=("d",), tier=Tier.QUERY, purpose=Purpose.RESEARCH, epsilon=Fraction(1),
                   algorithm=Algorithm(source=b"x", outputs=(OutputRange(name="a", lower=0, upper=1),)))
