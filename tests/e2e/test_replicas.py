"""Two broker replicas on one PostgreSQL database, behind which one connector serves."""

from __future__ import annotations

import threading
import uuid
from fractions import Fraction

import pytest

from yumen.errors import Code, YumenError
from yumen.jobs import Aggregate, JobRequest, Purpose, Query, Tier
from yumen.localspace import Department, LocalSpace, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture(scope="module")
def replicas(postgres_dsn, tmp_path_factory):
    import psycopg

    schema = f"replicas_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    mp = pytest.MonkeyPatch()
    mp.setenv("YUMEN_BROKER_DSN", postgres_dsn)
    space = LocalSpace(
        tmp_path_factory.mktemp("replicas"),
        departments=(Department(id="weather-bureau", datasets=(("weather-daily", 3_650),)),),
        broker_settings=f'store = "postgres"\npostgres_schema = "{schema}"\nsweep_interval_s = 1',
    )
    space.setup()
    # One job may ask for the whole cap here, so that concurrent jobs contend for all of it.
    settings = space.root / "policy.toml"
    settings.write_text(settings.read_text().replace('[rules.open-data]\nmax_epsilon = "2"', '[rules.open-data]\nmax_epsilon = "10"'))
    try:
        space.start(timeout=90)
        second = space.start_replica("broker-2", free_port())
        yield space, second
    finally:
        space.stop()
        mp.undo()
        with psycopg.connect(postgres_dsn, autocommit=True) as db:
            db.execute(f"DROP SCHEMA {schema} CASCADE")


def _job(i: int, eps: str) -> JobRequest:
    return JobRequest(job_id=f"r-{i}", datasets=("weather-daily",), tier=Tier.QUERY, purpose=Purpose.RESEARCH,
                      epsilon=Fraction(eps), query=Query(aggregate=Aggregate.COUNT))


def test_a_job_accepted_by_one_replica_runs_on_a_connector_of_the_other(replicas):
    from yumen.client import YumenClient

    space, second = replicas
    with YumenClient(second, space.tls("operator-1")) as c:
        c.submit(_job(0, "0.5"))
        events = [e.state for e in c.watch("r-0", timeout=60)]
        assert events[-1] == "succeeded"
        assert c.result("r-0").values[0]["name"] == "count"


def _export(space, broker: str, out) -> list:
    """The log as an auditor exports it from ``broker``: (index, entry) in log order."""
    import subprocess
    import sys

    from yumen.audit._reconcile import entries_from_export

    env = dict(space.cli_env("auditor-1"), YUMEN_BROKER=broker)
    proc = subprocess.run([sys.executable, "-m", "yumen", "audit", "export", "--out", str(out)], env=env, text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return entries_from_export(str(out))


def test_concurrent_whole_budget_jobs_across_replicas_exactly_one_runs(replicas, tmp_path):
    from yumen.client import YumenClient

    space, second = replicas
    # The department refuses the winner (its own limit is 1 per job) and the budget comes
    # back; with the connector online that refund could land while the race still runs and
    # let a second job in, legitimately. Offline, every job waits and exactly one fits.
    space.stop_process("weather-bureau")
    clients = [YumenClient(space.address, space.tls("operator-1")), YumenClient(second, space.tls("operator-1"))]
    wins, refusals, errors = [], [], []
    gate = threading.Barrier(40)

    def go(i: int) -> None:
        gate.wait()
        try:
            clients[i % 2].submit(_job(100 + i, "9.5"))  # 0.5 of the cap of 10 is already spent
            wins.append(i)
        except YumenError as e:
            (refusals if e.code is Code.BUDGET_EXHAUSTED else errors).append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(wins) == 1 and len(refusals) == 39
    space.start_connector("weather-bureau")
    # The department's own limit (1 per job) refuses the winner; the budget comes back.
    final = [e.state for e in clients[0].watch(f"r-{100 + wins[0]}", timeout=60)][-1]
    for c in clients:
        c.close()
    assert final == "refused"

    # The decisions, the ledger and the log agree, in the order the ledger saw them: the log
    # (exported from the replica that lost most races) holds exactly one allowed decision for
    # these 40 jobs, for the job the replicas let in, and it comes before every refusal for
    # budget, since each refusal saw the budget that reservation had taken.
    racing = {f"r-{100 + i}" for i in range(40)}
    decided = [(i, e) for i, e in _export(space, second, tmp_path / "export")
               if e.TYPE == "job_decided" and e.job_id in racing and not e.details.get("cancelled")]
    assert len(decided) == 40 and len({e.job_id for _, e in decided}) == 40
    allowed = [e for _, e in decided if e.allowed]
    assert [e.job_id for e in allowed] == [f"r-{100 + wins[0]}"]
    assert decided[0][1].allowed, f"a refusal for budget was logged before the reservation that caused it: {decided[0]}"
    assert all(e.details.get("gate") == "budget" for _, e in decided[1:])
    assert [i for i, _ in decided] == sorted(i for i, _ in decided)


def test_both_replicas_append_to_one_log_that_verifies_and_replays(replicas, tmp_path):
    import subprocess
    import sys

    space, second = replicas
    env = dict(space.cli_env("auditor-1"), YUMEN_BROKER=second)
    out = tmp_path / "export"

    def yumen(*args):
        return subprocess.run([sys.executable, "-m", "yumen", *args], env=env, text=True, capture_output=True, timeout=120)

    assert yumen("audit", "export", "--out", str(out)).returncode == 0
    vkey = space.root / "broker-state" / "log.vkey"
    replay = yumen("audit", "replay", "--from", str(out), "--vkey", str(vkey))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "match the log" in replay.stdout
