"""The budget rules over a real store: no sequence of jobs, refunds, policy changes and periods
takes a privacy-unit namespace past its lifetime cap, and a refund returns exactly its charge."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yumen.broker._store import JobRecord, SqliteStore
from yumen.catalog import PrivacyUnit
from yumen.errors import Code, YumenError
from yumen.jobs import JobState
from yumen.loss import Accounting, epsilon_of_rho, rho_of_epsilon
from yumen.policy import LIFETIME, limits_for, namespace_key

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
SHARED = PrivacyUnit(column="pid", max_contributions=2, namespace="residents", shared=True)
DATASETS = {"d1": ("health", SHARED), "d2": ("civil-affairs", SHARED), "d3": ("weather", PrivacyUnit())}
RULES = ((30, Fraction(5)), (7, Fraction(5)))  # two rules on the same data with different periods
LIFETIME_CAPS = (Fraction(12), Fraction(8))  # a policy change may lower the lifetime cap


def _job(job_id: str, license: str) -> JobRecord:
    return JobRecord(job_id=job_id, operator="op", license=license, request_digest="sha256:" + job_id,
                     request={"datasets": []}, algorithm_source=b"", state=JobState.PENDING, message="",
                     decision={}, created_ms=0, updated_ms=0)


RESERVE = st.tuples(st.just("reserve"), st.sampled_from(["LIC-A", "LIC-B"]), st.sampled_from(sorted(DATASETS)),
                    st.sampled_from([Fraction(1, 2), Fraction(1), Fraction(2), Fraction(3)]),
                    st.sampled_from(range(len(RULES))), st.sampled_from(range(len(LIFETIME_CAPS))),
                    st.booleans())  # with or without the namespace's period cap in force
REFUND = st.tuples(st.just("refund"), st.integers(0, 60))
ADVANCE = st.tuples(st.just("advance"), st.integers(1, 40))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(RESERVE, REFUND, ADVANCE), max_size=50))
def test_no_sequence_of_jobs_refunds_policy_changes_and_periods_passes_the_lifetime_cap(tmp_path_factory, ops):
    store = SqliteStore(tmp_path_factory.mktemp("ledger") / "b.db")
    at = START
    live: dict[str, tuple] = {}  # job -> (charges) not yet refunded
    n = 0
    for op in ops:
        if op[0] == "advance":
            at += dt.timedelta(days=op[1])
            continue
        if op[0] == "refund":
            if live:
                job = sorted(live)[op[1] % len(live)]
                ((_, charges),) = store.release_reservation(job)
                assert charges == live.pop(job)  # exactly what it charged, no more
            continue
        _, license, ds, eps, rule, policy, with_period_cap = op
        department, unit = DATASETS[ds]
        days, cap = RULES[rule]
        r = limits_for(ds, unit, department=department, license=license, epsilon=eps, epsilon_cap=cap,
                       period_days=days, max_runs=0, dataset_epsilon_cap=Fraction(6) if with_period_cap else Fraction(0),
                       dataset_period_days=30, lifetime_epsilon_cap=LIFETIME_CAPS[policy], at=at)
        n += 1
        lifetime = ("*", r.namespace, LIFETIME)
        before = store.balance(lifetime)[0]
        try:
            store.create_job(_job(f"j{n}", license), [r])
        except YumenError as e:
            assert e.code is Code.BUDGET_EXHAUSTED
            assert store.balance(lifetime)[0] == before  # a refusal writes nothing
            continue
        live[f"j{n}"] = r.charges()
        assert store.balance(lifetime)[0] <= LIFETIME_CAPS[policy]  # the cap in force when it was charged
        assert store.balance(lifetime)[0] <= max(LIFETIME_CAPS)
    # every account holds exactly what the unrefunded reservations charged it
    expected: dict[tuple[str, str, str], Fraction] = {}
    for charges in live.values():
        for c in charges:
            expected[c.account] = expected.get(c.account, Fraction(0)) + c.amount
    assert {k: v for k, v in expected.items() if v} == {row[:3]: row[3] for row in store.ledger() if row[3]}


def test_two_rules_with_different_periods_share_one_period_cap_on_the_same_people(tmp_path):
    store = SqliteStore(tmp_path / "b.db")
    kw = dict(department="health", epsilon=Fraction(5), epsilon_cap=Fraction(50), max_runs=0,
              dataset_epsilon_cap=Fraction(5), dataset_period_days=30, lifetime_epsilon_cap=Fraction(100), at=START)
    store.create_job(_job("a", "LIC-A"), [limits_for("d1", SHARED, license="LIC-A", period_days=30, **kw)])
    try:
        store.create_job(_job("b", "LIC-B"), [limits_for("d1", SHARED, license="LIC-B", period_days=7, **kw)])
        raise AssertionError("a second rule's period renewed the namespace's period cap")
    except YumenError as e:
        assert e.code is Code.BUDGET_EXHAUSTED and "dataset budget exhausted" in e.message


def test_a_refund_never_takes_from_an_account_its_reservation_did_not_charge(tmp_path):
    store = SqliteStore(tmp_path / "b.db")
    kw = dict(department="health", epsilon=Fraction(2), epsilon_cap=Fraction(50), period_days=30, max_runs=0,
              dataset_period_days=30, lifetime_epsilon_cap=Fraction(100), at=START)
    # charged before the policy had a period cap for the namespace, then refunded after one exists
    store.create_job(_job("early", "LIC-A"), [limits_for("d1", SHARED, license="LIC-A", dataset_epsilon_cap=Fraction(0), **kw)])
    store.create_job(_job("later", "LIC-A"), [limits_for("d1", SHARED, license="LIC-A", dataset_epsilon_cap=Fraction(10), **kw)])
    ns_period = ("*", namespace_key("d1", "health", SHARED), "30d:" + str(int(START.timestamp() // 86400) // 30))
    assert store.balance(ns_period)[0] == 2
    store.release_reservation("early")
    assert store.balance(ns_period)[0] == 2  # the later job's charge stays
    assert store.balance(("*", namespace_key("d1", "health", SHARED), LIFETIME))[0] == 2


def test_datasets_of_several_departments_on_a_shared_namespace_add_up_for_one_person(tmp_path):
    store = SqliteStore(tmp_path / "b.db")
    kw = dict(epsilon=Fraction(3), epsilon_cap=Fraction(50), period_days=30, max_runs=0,
              dataset_epsilon_cap=Fraction(0), dataset_period_days=30, lifetime_epsilon_cap=Fraction(5), at=START)
    one = limits_for("d1", SHARED, department="health", license="LIC-A", **kw)
    other = limits_for("d2", SHARED, department="civil-affairs", license="LIC-A", **kw)
    assert one.namespace == other.namespace == "ns:shared/residents"
    try:  # one job over both: 3 + 3 on the same people is over the lifetime cap of 5
        store.create_job(_job("both", "LIC-A"), [one, other])
        raise AssertionError("the loss of one person on two datasets was not summed")
    except YumenError as e:
        assert "lifetime budget exhausted" in e.message
    # a namespace a department keeps to itself does not mix with another department's
    private = PrivacyUnit(column="pid", max_contributions=2, namespace="residents")
    assert namespace_key("d1", "health", private) != namespace_key("d2", "civil-affairs", private)


def test_zcdp_caps_and_charges_are_exact_rho_and_many_jobs_fit_where_pure_epsilon_would_not(tmp_path):
    unit = PrivacyUnit(column="pid", max_contributions=1, accounting=Accounting.ZCDP, delta=Fraction(1, 10**9))
    store = SqliteStore(tmp_path / "b.db")
    kw = dict(department="health", license="LIC-A", epsilon_cap=Fraction(10), period_days=30, max_runs=0,
              dataset_epsilon_cap=Fraction(0), dataset_period_days=30, lifetime_epsilon_cap=Fraction(10), at=START)
    accepted = 0
    for i in range(100):
        r = limits_for("z", unit, epsilon=Fraction(1, 2), **kw)
        assert r.amount == rho_of_epsilon(Fraction(1, 2), unit.delta) and r.accounting is Accounting.ZCDP
        try:
            store.create_job(_job(f"z{i}", "LIC-A"), [r])
            accepted += 1
        except YumenError:
            break
    assert accepted > 20  # pure ε would allow exactly 20 jobs of 0.5 under a cap of 10
    spent = store.balance(("*", "ns:dataset/z", LIFETIME))[0]
    assert spent == accepted * rho_of_epsilon(Fraction(1, 2), unit.delta)  # exact fractions
    assert epsilon_of_rho(spent, unit.delta) <= 10  # the lifetime (ε, δ) guarantee holds
