"""Property tests: the engine against an independent oracle of the default policy, and
the broker's explain against its enforcement."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yumen.catalog import Level
from yumen.jobs import Purpose, Tier
from yumen.policy import DecisionRequest, License, LicenseStatus, PolicyEngine

NOW = dt.datetime(2026, 11, 27, 12, tzinfo=dt.timezone.utc)
ENGINE = PolicyEngine.default()

# The default policy written out as plain data, independently of Casbin and the TOML file.
ALLOWED = {
    "L1": {t: {"public-interest", "research", "commercial"} for t in ("query", "approved-algorithm", "custom-algorithm")},
    "L2": {"query": {"public-interest", "research", "commercial"},
           "approved-algorithm": {"public-interest", "research"},
           "custom-algorithm": {"public-interest", "research"}},
    "L3": {"query": {"public-interest", "research"}, "approved-algorithm": {"public-interest", "research"}},
    "L4": {},
}
MAX_EPS = {("L1", None): Fraction(2), ("L2", "commercial"): Fraction(1, 2), ("L2", None): Fraction(1), ("L3", None): Fraction(1, 2)}


def oracle(req: DecisionRequest, lic: License) -> bool:
    if lic.status is not LicenseStatus.ACTIVE or not (lic.valid_from <= req.at < lic.valid_until):
        return False
    if req.purpose not in {p.value for p in lic.purposes} or req.level not in {lv.value for lv in lic.levels}:
        return False
    if req.purpose not in ALLOWED[req.level].get(req.tier, set()):
        return False
    cap = MAX_EPS.get((req.level, req.purpose if req.level == "L2" and req.purpose == "commercial" else None))
    return req.epsilon <= cap


licenses = st.builds(
    License,
    id=st.just("LIC-P"), organization=st.just("Org"), group=st.sampled_from(["licensed", "research-institute", "guest"]),
    purposes=st.frozensets(st.sampled_from(list(Purpose)), min_size=1),
    levels=st.frozensets(st.sampled_from([Level.L1, Level.L2, Level.L3]), min_size=0),
    valid_from=st.sampled_from([NOW - dt.timedelta(days=30), NOW + dt.timedelta(days=1)]),
    valid_until=st.sampled_from([NOW + dt.timedelta(days=30), NOW - dt.timedelta(seconds=1) + dt.timedelta(days=40)]),
    status=st.sampled_from(list(LicenseStatus)),
).filter(lambda x: x.valid_from < x.valid_until)

requests = st.builds(
    DecisionRequest,
    license=st.just("LIC-P"), department=st.sampled_from(["weather-bureau", "health-commission"]),
    dataset=st.sampled_from(["a", "b"]), level=st.sampled_from(["L1", "L2", "L3", "L4"]),
    tier=st.sampled_from([t.value for t in Tier]), purpose=st.sampled_from([p.value for p in Purpose]),
    epsilon=st.sampled_from([Fraction(1, 10), Fraction(1, 2), Fraction(3, 4), Fraction(1), Fraction(2), Fraction(3)]),
    at=st.just(NOW),
)


@settings(max_examples=600, deadline=None)
@given(requests, licenses)
def test_nothing_outside_the_policy_is_allowed_and_everything_inside_is(req, lic):
    lic_for_group = lic if lic.group != "guest" else None  # a group no rule names
    if lic.group == "guest":
        d = ENGINE.decide(req, License(**{**lic.__dict__, "group": "guest"}))
        assert not d.allowed
        return
    d = ENGINE.decide(req, lic_for_group)
    assert d.allowed == oracle(req, lic), (d, req, lic)
    if d.allowed:
        assert d.obligations is not None and req.epsilon <= d.obligations.max_epsilon
    else:
        assert d.reason


# -- explain and enforce agree, on a real broker ----------------------------------------

@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    from yumen.broker._audit import BrokerAudit, open_log
    from yumen.broker._core import Broker
    from yumen.broker._store import SqliteStore
    from yumen.catalog import DatasetRegistration
    from yumen.connectors import demo_registration
    from yumen.identity import Identity, Role, init_ca, issue, load_private_key

    root = tmp_path_factory.mktemp("broker")
    init_ca(root / "pki")
    _, key = issue(root / "pki", role=Role.BROKER, name="broker")
    store = SqliteStore(root / "b.db")
    audit = BrokerAudit(open_log(root / "b.db", key_path=root / "log.key", origin="test/log"), "broker")
    b = Broker(broker_id="broker", store=store, policy=ENGINE, audit=audit, signing_key=load_private_key(key))
    for ds in ("weather-daily", "bus-trips", "outpatient-visits"):
        reg = DatasetRegistration.from_dict({**demo_registration(ds), "version": "sha256:" + "ab" * 32})
        store.put_dataset(reg, "nobody")
    store.put_license(License(id="LIC-P", organization="Org", purposes=frozenset(Purpose),
                              levels=frozenset({Level.L1, Level.L2}), valid_from=NOW - dt.timedelta(days=1),
                              valid_until=NOW + dt.timedelta(days=3650)).to_dict())
    return b, Identity(role=Role.OPERATOR, name="op", license="LIC-P")


jobs = st.tuples(
    st.sampled_from(["weather-daily", "bus-trips", "outpatient-visits"]),
    st.sampled_from([p.value for p in Purpose]),
    st.sampled_from(["0.1", "0.25", "0.5", "1", "1.5"]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jobs)
def test_explain_and_submit_always_agree_and_explain_spends_nothing(broker, job):
    import uuid

    from yumen.errors import YumenError
    from yumen.jobs import Aggregate, JobRequest, Query, parse_epsilon

    b, who = broker
    dataset, purpose, eps = job
    req = JobRequest(job_id=f"p-{uuid.uuid4().hex}", datasets=(dataset,), tier=Tier.QUERY, purpose=Purpose(purpose),
                     epsilon=parse_epsilon(eps), query=Query(aggregate=Aggregate.COUNT))
    before = b.explain(who, req)
    assert b.explain(who, req) == before  # explaining spends nothing
    try:
        b.submit(who, req)
        allowed = True
    except YumenError as e:
        allowed = False
        assert e.message.endswith(before["reason"]) or before["reason"] in e.message
    assert allowed == before["allowed"]
    if allowed:
        after = b.explain(who, req)
        assert Fraction(before["epsilon_remaining"]) - Fraction(after["epsilon_remaining"] or "0") == Fraction(eps)
