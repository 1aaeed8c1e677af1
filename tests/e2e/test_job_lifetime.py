"""A job's end when it does not finish by itself: ticket expiry and operator cancellation,
through a real broker and real connectors.

A connector pinning the wrong broker certificate rejects every ticket. Before tickets
expired, its jobs stayed "running" with their budget reserved; now the broker fails them
when the ticket expires, with a fixed message, and gives the reserved budget back exactly.
An operator cancels its own queued job (budget back) or running job (its sandbox is killed,
nothing is released, the budget stays spent because the data may have been read). The
auditor's replay of the log agrees with the broker's books after all of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from yumen.broker._core import EXPIRED
from yumen.identity import Role, issue
from yumen.localspace import OPERATOR_LICENSE, Department, LocalSpace

pytestmark = pytest.mark.e2e

ALGOS = Path(__file__).resolve().parent / "algorithms"
WEATHER = "weather-daily"     # served by a healthy connector
BUSES = "bus-trips"           # served by a connector that pins the wrong broker certificate
TTL_S = 8                     # the broker's ticket lifetime in this space


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifetime")
    # the sandbox's user must traverse every parent of the scratch (pytest's folders are 0700)
    scratch = Path(tempfile.mkdtemp(prefix="yumen-test-scratch-", dir="/tmp"))
    os.chmod(scratch, 0o711)
    s = LocalSpace(root, departments=(Department(id="weather-bureau", datasets=((WEATHER, 3_650),)),
                                      Department(id="transport-dept", datasets=((BUSES, 2_000),))),
                   broker_settings=f"ticket_ttl_s = {TTL_S}\nsweep_interval_s = 1",
                   timing={"allowance_s": 2.0, "wave_slack_s": 0.25, "block_parallelism": 2})
    s.setup()
    issue(s.pki, role=Role.BROKER, name="impostor")  # a broker certificate of the same CA, not the broker's
    issue(s.pki, role=Role.OPERATOR, name="operator-2", license=OPERATOR_LICENSE)
    for dep in ("weather-bureau", "transport-dept"):
        config = s.root / f"{dep}.toml"
        # cold sandboxes: these tests find a job's sandboxes by the scratch they mount (a warm
        # sandbox is stopped through its backend: tests/sandbox/test_warm_pool.py)
        text = config.read_text().replace('sandbox = "bwrap"',
                                          f'sandbox = "bwrap"\nsandbox_pool = 0\nscratch_dir = "{scratch}/{dep}"')
        if dep == "transport-dept":
            text = text.replace('broker_certificate = "pki/broker.crt"', 'broker_certificate = "pki/impostor.crt"')
        config.write_text(text)
    s.scratch = scratch
    try:
        s.start(timeout=90)
        yield s
    finally:
        s.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _yumen(space: LocalSpace, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "yumen", *args], env=space.cli_env(who), text=True,
                          capture_output=True, timeout=300)


def _status(space: LocalSpace, job_id: str) -> dict:
    proc = _yumen(space, "operator-1", "job", "status", job_id, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["job"]


def _wait_for(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _ledger(space: LocalSpace) -> dict:
    from yumen.client import AdminClient

    with AdminClient(space.address, space.tls("admin-1")) as admin:
        return admin.accounts()["ledger"]


def _spent(ledger: dict, dataset: str) -> tuple:
    """The accounts of ``dataset`` that hold any charge (a refunded account stays as a zero row)."""
    return tuple(sorted((k, v) for k, v in ledger.items()
                        if (k[1] == dataset or k[1].endswith("/" + dataset)) and v[0] != 0))


def _query(dataset: str, job_id: str, epsilon: str = "0.3") -> list[str]:
    return ["submit", "query", "--dataset", dataset, "--aggregate", "count", "--purpose", "research",
            "--epsilon", epsilon, "--job-id", job_id, "--no-wait"]


def _sandbox_pids(scratch: Path) -> list[int]:
    """Host processes whose command line names the connector's scratch (its sandboxes)."""
    needle = str(scratch).encode() + b"/"
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if needle in f.read():
                        pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_connector_pinning_the_wrong_broker_certificate_makes_the_job_fail_at_ticket_expiry_with_its_budget_back(space):
    before = _spent(_ledger(space), BUSES)
    sub = _yumen(space, "operator-1", *_query(BUSES, "wrong-cert-1"))
    assert sub.returncode == 0, sub.stderr
    assert _spent(_ledger(space), BUSES) != before  # reserved while it waits
    _wait_for(lambda: _status(space, "wrong-cert-1")["state"] == "running", "the ticket to be sent")
    _wait_for(lambda: _status(space, "wrong-cert-1")["state"] == "failed", "the ticket to expire", timeout=TTL_S + 60)
    job = _status(space, "wrong-cert-1")
    assert job["message"] == EXPIRED
    assert _spent(_ledger(space), BUSES) == before  # exactly what was reserved came back
    proc = _yumen(space, "operator-1", "job", "result", "wrong-cert-1")
    assert proc.returncode == 7 and "failed" in proc.stderr
    log = (space.root / "logs" / "transport-dept.log").read_text()
    assert "ticket rejected" in log  # it really was the connector's pinning that stopped it


def test_an_operator_cancels_a_queued_job_and_gets_the_reserved_budget_back_exactly(space):
    space.stop_process("weather-bureau")  # no connector: the job waits in the queue
    try:
        before = _spent(_ledger(space), WEATHER)
        sub = _yumen(space, "operator-1", *_query(WEATHER, "queued-1"))
        assert sub.returncode == 0, sub.stderr
        assert _spent(_ledger(space), WEATHER) != before
        proc = _yumen(space, "operator-1", "job", "cancel", "queued-1")
        assert proc.returncode == 0, proc.stderr
        assert "cancelled" in proc.stdout and "reserved budget was returned" in proc.stdout
        assert _spent(_ledger(space), WEATHER) == before
        again = _yumen(space, "operator-1", "job", "cancel", "queued-1", "--json")  # idempotent
        assert again.returncode == 0 and json.loads(again.stdout)["job"]["state"] == "cancelled"
    finally:
        space.start_connector("weather-bureau")
        space.wait_online([WEATHER])
    time.sleep(2)  # the reconnected connector is not sent the cancelled job
    assert _status(space, "queued-1")["state"] == "cancelled"
    assert "queued-1" not in (space.root / "logs" / "weather-bureau.log").read_text()


def test_an_operator_cancels_a_running_algorithm_its_sandbox_is_killed_nothing_is_released_and_the_budget_stays_spent(space):
    scratch = space.scratch / "weather-bureau"
    before = _spent(_ledger(space), WEATHER)
    sub = _yumen(space, "operator-1", "submit", "algorithm", str(ALGOS / "sleep_forever.py"), "--dataset", WEATHER,
                 "--output", "x=0:1", "--timeout", "120", "--blocks", "2", "--epsilon", "0.5",
                 "--purpose", "public-interest", "--job-id", "running-1", "--no-wait")
    assert sub.returncode == 0, sub.stderr
    _wait_for(lambda: "started at department" in _status(space, "running-1")["message"], "the department to start it")
    _wait_for(lambda: bool(_sandbox_pids(scratch)), "its sandboxes to run")
    charged = _spent(_ledger(space), WEATHER)
    assert charged != before
    proc = _yumen(space, "operator-1", "job", "cancel", "running-1")
    assert proc.returncode == 0, proc.stderr
    assert "budget stays spent" in proc.stdout
    _wait_for(lambda: not _sandbox_pids(scratch), "its sandboxes to be killed", timeout=60)
    assert _spent(_ledger(space), WEATHER) == charged  # the data may have been read: no refund
    job = _status(space, "running-1")
    assert job["state"] == "cancelled"
    result = _yumen(space, "operator-1", "job", "result", "running-1")
    assert result.returncode == 7 and "cancelled" in result.stderr
    # its receipt (failed: the sandboxes were killed) comes in, is logged, and releases nothing
    log = space.root / "logs" / "weather-bureau.log"
    _wait_for(lambda: "stopping job running-1" in log.read_text(), "the connector to be told")
    _wait_for(lambda: not any(scratch.iterdir()) if scratch.exists() else True, "the job's scratch to be destroyed")
    assert _status(space, "running-1")["state"] == "cancelled"


def test_a_job_can_be_cancelled_only_by_its_own_operator(space):
    space.stop_process("weather-bureau")
    try:
        assert _yumen(space, "operator-1", *_query(WEATHER, "mine-1", "0.1")).returncode == 0
        other = _yumen(space, "operator-2", "job", "cancel", "mine-1")
        assert other.returncode == 3 and "no job 'mine-1' of yours" in other.stderr
        auditor = _yumen(space, "auditor-1", "job", "cancel", "mine-1")
        assert auditor.returncode == 4, auditor.stderr
        assert _status(space, "mine-1")["state"] == "pending"
        assert _yumen(space, "operator-1", "job", "cancel", "mine-1").returncode == 0
    finally:
        space.start_connector("weather-bureau")
        space.wait_online([WEATHER])


def test_staged_data_is_private_to_the_jobs_sandbox_and_a_connector_killed_mid_job_leaves_none_after_restart(space):
    scratch = space.scratch / "weather-bureau"
    sub = _yumen(space, "operator-1", "submit", "algorithm", str(ALGOS / "sleep_forever.py"), "--dataset", WEATHER,
                 "--output", "x=0:1", "--timeout", "120", "--blocks", "2", "--epsilon", "0.2",
                 "--purpose", "public-interest", "--job-id", "crash-1", "--no-wait")
    assert sub.returncode == 0, sub.stderr
    _wait_for(lambda: bool(_sandbox_pids(scratch)), "its sandboxes to run")
    (job_dir,) = [d for d in scratch.iterdir()]
    owner = job_dir.stat().st_uid
    if os.geteuid() == 0:
        assert owner >= 2_000_000_000  # the job's own sandbox uid, not the connector's
    staged = [p for p in job_dir.rglob("*")]
    assert any(p.name.startswith("block-") for p in staged)
    for path in [job_dir, *staged]:
        st = path.lstat()
        assert st.st_uid == owner, path
        assert oct(st.st_mode & 0o777) == (oct(0o700) if path.is_dir() else oct(0o400)), path
    assert oct(scratch.stat().st_mode & 0o777) == oct(0o711)  # traversable, not listable

    space.stop_process("weather-bureau", sig=signal.SIGKILL)
    assert job_dir.exists()  # the crash left it behind
    _wait_for(lambda: not _sandbox_pids(scratch), "its sandboxes to die with their connector", timeout=60)
    space.start_connector("weather-bureau")
    space.wait_online([WEATHER])
    assert not job_dir.exists() and list(scratch.iterdir()) == []
    log = (space.root / "logs" / "weather-bureau.log").read_text()
    assert "removed the scratch of 1 jobs a previous connector process left" in log


def test_the_log_with_expiries_and_cancellations_verifies_and_replays_to_the_brokers_books(space, tmp_path):
    # (runs after the tests above in this module: the log holds an expiry and three cancellations)
    out = tmp_path / "export"
    run = lambda *a: _yumen(space, "auditor-1", *a)
    assert run("audit", "export", "--out", str(out)).returncode == 0
    vkey = str(space.root / "broker-state" / "log.vkey")
    verify = run("audit", "verify", "--from", str(out), "--vkey", vkey)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    replay = run("audit", "replay", "--from", str(out), "--vkey", vkey)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    entries = [json.loads(line) for line in (out / "entries.jsonl").read_text().splitlines()]
    assert len(entries) > 5


def test_the_readmes_audit_commands_work_as_written_with_the_brokers_published_log_vkey(space, tmp_path):
    """The README tells an auditor to save the broker's state_dir/log.vkey as log.vkey and run
    export, verify and replay; those lines, as written, succeed."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("The log's verifier key is the file `log.vkey` in the broker's `state_dir`", 1)[1]
    block = block.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines()
                if line.startswith(("yumen audit export", "yumen audit verify", "yumen audit replay"))]
    assert [c.split()[2] for c in commands] == ["export", "verify", "replay"]
    shutil.copy(space.root / "broker-state" / "log.vkey", tmp_path / "log.vkey")  # the README's `cp` line
    env = dict(space.cli_env("auditor-1"), HOME=str(tmp_path), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for command in commands:
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
        assert proc.returncode == 0, f"{command}: {proc.stdout}{proc.stderr}"
        assert "taken from the export itself" not in proc.stdout  # verified against the published key
