"""Budget reservation and job creation are one atomic, idempotent step."""

import threading
from fractions import Fraction

import pytest

import datetime as dt

from yumen.broker._store import JobRecord, SqliteStore
from yumen.catalog import PrivacyUnit
from yumen.errors import Code, YumenError
from yumen.jobs import JobState
from yumen.policy import Reservation, limits_for, period_of

AT = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def _job(job_id: str, digest: str = "sha256:aa", operator: str = "op") -> JobRecord:
    return JobRecord(job_id=job_id, operator=operator, license="LIC-1", request_digest=digest,
                     request={"datasets": ["ds"]}, algorithm_source=b"", state=JobState.PENDING, message="m",
                     decision={"policy_version": "v"}, created_ms=1, updated_ms=1)


def _res(eps: str, cap: str = "1") -> list[Reservation]:
    return [limits_for("ds", PrivacyUnit(), department="d", license="LIC-1", epsilon=Fraction(eps), epsilon_cap=Fraction(cap),
                       period_days=30, max_runs=0, dataset_epsilon_cap=Fraction(0), dataset_period_days=30,
                       lifetime_epsilon_cap=Fraction(100), at=AT)]


P = period_of(30, AT)


def test_reservation_over_the_cap_is_refused_with_what_is_left_and_writes_nothing(tmp_path):
    store = SqliteStore(tmp_path / "b.db")
    store.create_job(_job("j1"), _res("0.7"))
    with pytest.raises(YumenError) as e:
        store.create_job(_job("j2"), _res("0.5"))
    assert e.value.code is Code.BUDGET_EXHAUSTED
    assert "0.3 of 1 ε left" in e.value.message
    assert store.get_job("j2") is None
    assert store.spent("LIC-1", "ds", P) == Fraction(7, 10)


def test_same_job_id_and_request_is_idempotent(tmp_path):
    store = SqliteStore(tmp_path / "b.db")
    _, created = store.create_job(_job("j1"), _res("0.5"))
    again, created_again = store.create_job(_job("j1"), _res("0.5"))
    assert created and not created_again
    assert store.spent("LIC-1", "ds", P) == Fraction(1, 2)


def test_same_job_id_with_another_request_is_refused(tmp_path):
    store = SqliteStore(tmp_path / "b.db")
    store.create_job(_job("j1"), _res("0.5"))
    with pytest.raises(YumenError) as e:
        store.create_job(_job("j1", digest="sha256:bb"), _res("0.5"))
    assert e.value.code is Code.ALREADY_EXISTS


def test_concurrent_jobs_asking_for_the_whole_budget_exactly_one_wins(tmp_path):
    store = SqliteStore(tmp_path / "b.db")
    wins, losses = [], []

    def attempt(i: int) -> None:
        try:
            store.create_job(_job(f"j{i}"), _res("1"))
            wins.append(i)
        except YumenError as e:
            assert e.code is Code.BUDGET_EXHAUSTED
            losses.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 99
    assert store.spent("LIC-1", "ds", P) == 1


def test_final_state_cannot_change(tmp_path):
    store = SqliteStore(tmp_path / "b.db")
    store.create_job(_job("j1"), _res("0.1"))
    store.set_state("j1", JobState.SUCCEEDED, "done")
    with pytest.raises(YumenError):
        store.set_state("j1", JobState.FAILED, "late")
    assert [e.state for e in store.events("j1")] == [JobState.PENDING, JobState.SUCCEEDED]
