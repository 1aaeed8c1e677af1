"""The broker's budget under contention and across a crash, on a real store, policy and log."""

from __future__ import annotations

import datetime as dt
import threading
from fractions import Fraction

import pytest

from yumen.broker._audit import BrokerAudit, open_log
from yumen.broker._core import Broker
from yumen.broker._store import JobRecord, SqliteStore
from yumen.catalog import DatasetRegistration, Level
from yumen.connectors import demo_registration
from yumen.errors import Code, YumenError
from yumen.identity import Identity, Role, init_ca, issue, load_private_key
from yumen.jobs import Aggregate, JobRequest, JobState, Purpose, Query, Tier
from yumen.policy import License, PolicyBundle, PolicyEngine, period_of, reservation_for

NOW = dt.datetime.now(dt.timezone.utc)


def _bundle() -> PolicyBundle:
    """The default policy, but one job may ask for the whole cap (so each asks for all of it)."""
    b = PolicyBundle.default()
    return PolicyBundle(model=b.model, rules=b.rules,
                        settings=b.settings.replace('[rules.open-data]\nmax_epsilon = "2"', '[rules.open-data]\nmax_epsilon = "10"'))


def _broker(root) -> Broker:
    init_ca(root / "pki")
    _, key = issue(root / "pki", role=Role.BROKER, name="broker")
    store = SqliteStore(root / "b.db")
    audit = BrokerAudit(open_log(root / "b.db", key_path=root / "log.key", origin="test/log"), "broker")
    engine = PolicyEngine(_bundle())
    b = Broker(broker_id="broker", store=store, policy=engine, audit=audit, signing_key=load_private_key(key))
    audit.policy_changed(engine)
    reg = DatasetRegistration.from_dict({**demo_registration("weather-daily"), "version": "sha256:" + "ab" * 32})
    store.put_dataset(reg, "nobody")
    lic = License(id="LIC-C", organization="Org", levels=frozenset({Level.L1}), valid_from=NOW - dt.timedelta(days=1),
                  valid_until=NOW + dt.timedelta(days=365))
    store.put_license(lic.to_dict())
    audit.license_changed(lic.to_dict(), "issued", "admin")
    return b


WHO = Identity(role=Role.OPERATOR, name="op", license="LIC-C")


def _job(i: int, eps: str) -> JobRequest:
    return JobRequest(job_id=f"c-{i}", datasets=("weather-daily",), tier=Tier.QUERY, purpose=Purpose.RESEARCH,
                      epsilon=Fraction(eps), query=Query(aggregate=Aggregate.COUNT))


def test_100_concurrent_jobs_each_asking_for_the_whole_budget_exactly_one_runs(tmp_path):
    b = _broker(tmp_path)
    wins, refusals, errors = [], [], []
    gate = threading.Barrier(100)

    def go(i: int) -> None:
        gate.wait()
        try:
            b.submit(WHO, _job(i, "10"))
            wins.append(i)
        except YumenError as e:
            (refusals if e.code is Code.BUDGET_EXHAUSTED else errors).append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(wins) == 1 and len(refusals) == 99
    period = period_of(30, dt.datetime.now(dt.timezone.utc))
    assert b.store.spent("LIC-C", "weather-daily", period) == 10
    # the log holds one allowance and 99 budget denials, and nothing else about these jobs
    decided = [e for _, e in b.audit.tlog.entries(0, b.audit.tlog.size) if e.TYPE == "job_decided"]
    assert sum(e.allowed for e in decided) == 1 and sum(not e.allowed for e in decided) == 99


def test_after_a_crash_between_reservation_and_logging_the_ledger_and_the_log_agree(tmp_path):
    from yumen.audit import replay
    from yumen.audit._reconcile import Bills, Ledger, reevaluate

    b = _broker(tmp_path)
    b.submit(WHO, _job(1, "2"))
    # Simulate a crash: the job and its reservation are committed, the log append never happened.
    req = _job(2, "3")
    reg = b.store.get_dataset("weather-daily")[0]
    decision = b.decide(WHO, req, reg)
    record = JobRecord(job_id=req.job_id, operator=WHO.name, license=WHO.license, request_digest=req.digest(),
                       request=req.to_dict(), algorithm_source=b"", state=JobState.PENDING, message="",
                       decision={**decision.to_dict(), "level": "L1", "price_class": reg.price_class,
                                 "per_dataset": {reg.id: decision.to_dict()}}, created_ms=0, updated_ms=0)
    period = period_of(30, dt.datetime.now(dt.timezone.utc))
    b.store.create_job(record, [reservation_for(reg, license=WHO.license, epsilon=req.epsilon,
                                                obligations=decision.obligations, at=dt.datetime.now(dt.timezone.utc))])
    before = b.audit.tlog.size
    # The restarted broker recovers: the missing decision is appended from the store.
    b.recover()
    assert b.audit.tlog.size == before + 1
    b.recover()  # idempotent
    assert b.audit.tlog.size == before + 1
    ledger = Ledger()
    replay(b.audit.tlog.entries(0, b.audit.tlog.size), reevaluate=lambda e, c: reevaluate(e, c, ledger),
           accumulators={"ledger": ledger, "bills": Bills()})
    assert ledger.spent("LIC-C", "weather-daily", period) == b.store.spent("LIC-C", "weather-daily", period) == 5


def test_a_queued_job_is_cancelled_when_its_license_expires_while_it_waits(tmp_path):
    b = _broker(tmp_path)
    b.submit(WHO, _job(7, "1"))  # no connector is online: the job waits
    assert b.store.get_job("c-7").state is JobState.PENDING
    assert b.sweep_queued() == 0
    lic = License.from_dict(b.store.get_license("LIC-C"))
    expired = License.from_dict({**lic.to_dict(), "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2021-01-01T00:00:00Z"})
    b.store.put_license(expired.to_dict())
    assert b.sweep_queued() == 1
    job = b.store.get_job("c-7")
    assert job.state is JobState.CANCELLED and "expired" in job.message
    assert b.store.spent("LIC-C", "weather-daily", period_of(30, dt.datetime.now(dt.timezone.utc))) == 0  # nothing was touched


def test_a_receipt_stored_but_never_logged_is_logged_and_released_at_recovery(tmp_path):
    """The broker died after storing a connector's receipt and before logging it."""
    from yumen.tickets import Receipt, ReleasedValue

    b = _broker(tmp_path)
    b.submit(WHO, _job(9, "1"))
    _, ckey = issue(tmp_path / "pki", role=Role.CONNECTOR, name="wb", department="weather-bureau")
    receipt = Receipt(job_id="c-9", dataset="weather-daily", connector="wb", department="weather-bureau",
                      ticket_digest="sha256:" + "1" * 64, status="ok", dataset_version="sha256:" + "ab" * 32,
                      mechanism="geometric", epsilon_charged=Fraction(1), commitment="sha256:" + "2" * 64,
                      values=(ReleasedValue(name="count", group="", value=1234.0, noise_scale=2.0, ci95=6.0),))
    payload, sig = receipt.sign(load_private_key(ckey))
    b.store.put_partial("c-9", "weather-daily", {"payload": payload.decode(), "signature": sig.hex()})
    b.recover()
    job = b.store.get_job("c-9")
    assert job.state is JobState.SUCCEEDED and job.result["values"][0]["value"] == 1234.0
    types = [e.TYPE for _, e in b.audit.tlog.entries(0, b.audit.tlog.size)]
    assert types[-3:] == ["job_executed", "charge", "job_released"]  # the charge settles with the release
    b.recover()  # nothing more to do
    assert [e.TYPE for _, e in b.audit.tlog.entries(0, b.audit.tlog.size)] == types
