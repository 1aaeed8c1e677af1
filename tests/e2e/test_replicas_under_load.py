"""N broker replicas racing on one PostgreSQL database under load, killed and restarted mid-run.

200 concurrent jobs: 180 small ones on one dataset (they all fit its ε cap of 10) and 20 that
each ask for the whole cap of another dataset (exactly one can have it). Replicas are killed
with SIGKILL and restarted while jobs are submitted and run; a client whose replica died
retries the same job id on another one (job ids are idempotency keys). Afterwards exactly
181 jobs succeeded, 19 were refused for budget, none was lost or run twice, the log
verifies, and the auditor's replay re-decides every decision and rebuilds the same books.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
import time
import uuid
from fractions import Fraction

import pytest

from yumen.errors import Code, YumenError
from yumen.jobs import Aggregate, JobRequest, Purpose, Query, Tier
from yumen.localspace import Department, LocalSpace, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.slow]

SMALL, WHOLE = "weather-daily", "weather-daily-b"


def _space(root, schema: str) -> LocalSpace:
    space = LocalSpace(
        root,
        departments=(Department(id="weather-bureau", datasets=((SMALL, 3_650), (SMALL, 3_650, WHOLE)),
                                local_policy={"max_epsilon_per_job": "10", "dataset_epsilon_cap": "1000"}),),
        broker_settings=f'store = "postgres"\npostgres_schema = "{schema}"\nsweep_interval_s = 1',
    )
    space.setup()
    settings = space.root / "policy.toml"
    settings.write_text(settings.read_text().replace('[rules.open-data]\nmax_epsilon = "2"', '[rules.open-data]\nmax_epsilon = "10"'))
    return space


def _job(i: int) -> JobRequest:
    whole = i % 10 == 0  # 20 of 200
    return JobRequest(job_id=f"load-{i}", datasets=(WHOLE if whole else SMALL,), tier=Tier.QUERY,
                      purpose=Purpose.RESEARCH, epsilon=Fraction(10) if whole else Fraction(1, 20),
                      query=Query(aggregate=Aggregate.COUNT))


@pytest.mark.parametrize("n", [2, 3])
def test_replicas_killed_mid_run_lose_no_job_run_none_twice_and_the_log_replays(postgres_dsn, tmp_path, monkeypatch, n):
    import psycopg

    from yumen.client import YumenClient

    schema = f"load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    monkeypatch.setenv("YUMEN_BROKER_DSN", postgres_dsn)
    space = _space(tmp_path / "space", schema)
    try:
        space.start(timeout=120)
        ports = {"broker": space.port}
        for k in range(2, n + 1):
            ports[f"broker-{k}"] = free_port()
            space.start_replica(f"broker-{k}", ports[f"broker-{k}"])
        addresses = [f"127.0.0.1:{p}" for p in ports.values()]

        answers: dict[str, str] = {}
        lock = threading.Lock()
        gate = threading.Barrier(40)

        retries = [0]

        def submit_all(worker: int) -> None:
            gate.wait()
            for i in range(worker, 200, 40):
                time.sleep(2)  # spread the 200 over ~10 s, so the kills land mid-run
                job = _job(i)
                k = i
                deadline = time.monotonic() + 120
                while True:
                    address = addresses[k % len(addresses)]
                    try:
                        with YumenClient(address, space.tls("operator-1")) as c:
                            c.submit(job)
                        outcome = "accepted"
                    except YumenError as e:
                        if e.code is Code.BUDGET_EXHAUSTED:
                            outcome = "refused"
                        elif e.code in (Code.UNAVAILABLE, Code.LIMIT_EXCEEDED) and time.monotonic() < deadline:
                            k += 1  # that replica is down: the same job id on the next one
                            with lock:
                                retries[0] += 1
                            time.sleep(0.2)
                            continue
                        else:
                            outcome = f"error: {e.code.value}: {e.message}"
                    with lock:
                        answers[job.job_id] = outcome
                    break

        def killer() -> None:
            names = list(ports)
            for round_ in range(2):
                for name in reversed(names):  # the connector's replica ("broker") last
                    time.sleep(1.0)
                    space.stop_process(name, sig=signal.SIGKILL)
                    time.sleep(0.5)
                    if name == "broker":
                        space.start_broker()
                    else:
                        space.start_replica(name, ports[name])

        threads = [threading.Thread(target=submit_all, args=(w,)) for w in range(40)]
        kill = threading.Thread(target=killer)
        for t in threads:
            t.start()
        kill.start()
        for t in threads:
            t.join()
        kill.join()

        errors = {j: a for j, a in answers.items() if a.startswith("error")}
        assert not errors, list(errors.items())[:5]
        assert len(answers) == 200
        assert retries[0] > 0, "no submission met a killed replica"
        accepted = sorted(j for j, a in answers.items() if a == "accepted")
        small = [j for j in accepted if int(j.split("-")[1]) % 10]
        whole = [j for j in accepted if int(j.split("-")[1]) % 10 == 0]
        assert len(small) == 180 and len(whole) == 1, (len(small), whole)

        # No job lost: every accepted job reaches its end (the connector may have been cut off
        # from a killed replica; queued and running jobs are dispatched again).
        states: dict[str, str] = {}
        deadline = time.monotonic() + 300
        with YumenClient(addresses[-1], space.tls("operator-1")) as c:
            while time.monotonic() < deadline:
                pending = [j for j in accepted if states.get(j) not in ("succeeded", "failed", "refused", "cancelled")]
                if not pending:
                    break
                for j in pending:
                    states[j] = c.job(j).state
                time.sleep(1)
        assert collections.Counter(states.values()) == {"succeeded": 181}, collections.Counter(states.values())

        env = dict(space.cli_env("auditor-1"), YUMEN_BROKER=addresses[-1])
        out = tmp_path / "export"
        run = lambda *a: subprocess.run([sys.executable, "-m", "yumen", *a], env=env, text=True,
                                        capture_output=True, timeout=300)
        assert run("audit", "export", "--out", str(out)).returncode == 0
        vkey = space.root / "broker-state" / "log.vkey"
        verify = run("audit", "verify", "--from", str(out), "--vkey", str(vkey))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        replay = run("audit", "replay", "--from", str(out), "--vkey", str(vkey))
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "match the log" in replay.stdout

        # Nothing ran twice: one execution and one release per job in the log.
        from yumen.audit._reconcile import entries_from_export

        entries = [e for _, e in entries_from_export(str(out))]
        executed = collections.Counter(e.job_id for e in entries if e.TYPE == "job_executed")
        released = collections.Counter(e.job_id for e in entries if e.TYPE == "job_released")
        allowed = collections.Counter(e.job_id for e in entries if e.TYPE == "job_decided" and e.allowed)
        assert set(executed) == set(released) == set(allowed) == set(accepted)
        assert set(executed.values()) == set(released.values()) == set(allowed.values()) == {1}
        refusals = [e for e in entries if e.TYPE == "job_decided" and not e.allowed]
        assert len({e.job_id for e in refusals}) == 19 and all(e.details.get("gate") == "budget" for e in refusals)
    finally:
        space.stop()
        for name in list(space.procs):
            space.stop_process(name)
        with psycopg.connect(postgres_dsn, autocommit=True) as db:
            db.execute(f"DROP SCHEMA {schema} CASCADE")
