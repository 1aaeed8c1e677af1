"""Warm sandboxes (Docker and gVisor): one job per container, the cold path's limits, swept when orphaned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from yumen.errors import Code, YumenError
from yumen.sandbox import SandboxRequest, Status, get_backend
from yumen.sandbox._docker import OWNER_LABEL, SANDBOX_LABEL, sweep_orphans
from yumen.sandbox._pool import POOL_LABEL, PoolShape, reaper

from .conftest import POOL_SIZE, _backend, assert_no_trace


@pytest.fixture(params=[pytest.param("docker", marks=pytest.mark.docker),
                        pytest.param("gvisor", marks=pytest.mark.gvisor)])
def engine_backend(request):
    return _backend(request.param)


def _full_pool(backend):
    pool = backend.warm_up()
    assert pool is not None and pool.wait_full(120), "the pool did not fill"
    return pool


WHERE = b"""
import json, os, socket
json.dump({"host_id": int(open('/etc/hostname').read().strip() != 'sandbox'),
           "inputs": len(os.listdir('/data/input')), "param": json.load(open('/data/params.json'))['x']},
          open('/data/output/result.json', 'w'))
"""


def test_each_job_takes_a_fresh_warm_container_that_is_removed_after(engine_backend, tmp_path):
    pool = _full_pool(engine_backend)
    idle = pool.idle_ids()
    data = tmp_path / "d.parquet"
    data.write_bytes(b"PAR1 not really parquet")
    report = engine_backend.run(SandboxRequest(algorithm=WHERE, inputs={"d": data}, params={"x": 7}, timeout_s=30))
    assert report.status is Status.OK, report.error
    assert report.result == {"host_id": 0.0, "inputs": 1.0, "param": 7.0}
    first = pool.taken_ids[-1]
    assert first in idle  # it ran in a container started before the job existed
    _full_pool(engine_backend)
    report = engine_backend.run(SandboxRequest(algorithm=WHERE, params={"x": 8}, timeout_s=30))
    assert report.status is Status.OK and report.result["inputs"] == 0.0 and report.result["param"] == 8.0
    assert pool.taken_ids[-1] != first  # never reused
    assert reaper().drain(60)
    ids = {c["Id"] for c in engine_backend.client.api.containers(all=True, filters={"label": f"{SANDBOX_LABEL}=1"})}
    assert first not in ids and pool.taken_ids[-1] not in ids
    assert_no_trace(engine_backend)


def test_warm_containers_carry_every_limit_of_a_cold_one_and_no_job(engine_backend):
    pool = _full_pool(engine_backend)
    request = SandboxRequest(algorithm=b"")
    shape = PoolShape.of(request)
    assert pool.shape == shape
    container = engine_backend.client.containers.get(next(iter(pool.idle_ids())))
    host, config = container.attrs["HostConfig"], container.attrs["Config"]
    assert container.status == "running"
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == request.memory_mb << 20 and host["MemorySwap"] == request.memory_mb << 20
    assert host["PidsLimit"] >= request.max_processes and host["Runtime"] == engine_backend.oci_runtime
    assert config["User"] == "65534:65534"
    assert config["Labels"][SANDBOX_LABEL] == "1" and config["Labels"][POOL_LABEL] == "1"
    assert config["Labels"][OWNER_LABEL]
    (mount,) = [m for m in container.attrs["Mounts"] if m["Destination"] == "/data"]
    assert mount["RW"] is False
    # nothing of any job is there yet: only the empty layout
    assert sorted(os.listdir(mount["Source"])) == ["input", "output", "scratch"]
    assert os.listdir(os.path.join(mount["Source"], "input")) == []


def test_files_and_processes_of_one_job_are_absent_in_the_next(engine_backend):
    _full_pool(engine_backend)
    leave = b"""
import os, subprocess
open('/tmp/left-behind', 'w').write('secret')
open('/data/scratch/left-behind', 'w').write('secret')
subprocess.Popen(['/usr/bin/python3', '-c', 'import time; time.sleep(600)'], start_new_session=True)
open('/data/output/result.json', 'w').write('{"ok": 1}')
"""
    assert engine_backend.run(SandboxRequest(algorithm=leave, timeout_s=30)).status is Status.OK
    _full_pool(engine_backend)
    look = b"""
import json, os
seen = [p for p in ('/tmp/left-behind', '/data/scratch/left-behind') if os.path.exists(p)]
procs = [p for p in os.listdir('/proc') if p.isdigit() and 'sleep(600)' in open(f'/proc/{p}/cmdline').read()]
json.dump({"files": len(seen), "sleepers": len(procs)}, open('/data/output/result.json', 'w'))
"""
    report = engine_backend.run(SandboxRequest(algorithm=look, timeout_s=30))
    assert report.status is Status.OK and report.result == {"files": 0.0, "sleepers": 0.0}
    assert_no_trace(engine_backend)


def test_warm_containers_of_a_killed_process_are_swept(engine_backend, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from yumen.sandbox import get_backend
        backend = get_backend({engine_backend.name!r}, pool_size=1, pool_dir={str(tmp_path)!r})
        backend.check()
        pool = backend.warm_up()
        assert pool.wait_full(120)
        print(" ".join(pool.idle_ids()), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # a crash: no clean-up runs
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    orphans = done.stdout.split()
    assert orphans, done.stderr
    client = engine_backend.client
    # Left behind by the crash (unless another process on this host swept them already) ...
    sweep_orphans(client)
    listed = {c["Id"] for c in client.api.containers(all=True, filters={"label": f"{POOL_LABEL}=1"})}
    assert not set(orphans) & listed  # ... and removed by the next process's sweep
    # this process's own warm containers are not orphans
    assert _full_pool(engine_backend).idle_ids() <= listed


def test_a_job_of_another_shape_starts_cold_and_still_runs(engine_backend):
    pool = _full_pool(engine_backend)
    before = len(pool.taken_ids)
    report = engine_backend.run(SandboxRequest(algorithm=b"open('/data/output/result.json','w').write('{\"a\": 2}')",
                                               memory_mb=300, timeout_s=30))
    assert report.status is Status.OK and report.result == {"a": 2.0}
    assert len(pool.taken_ids) == before
    assert_no_trace(engine_backend)


@pytest.mark.parametrize("size", [-1, 65, True, 1.5])
def test_pool_size_outside_its_range_is_refused(size):
    with pytest.raises(YumenError) as e:
        get_backend("docker", pool_size=size)
    assert e.value.code is Code.INVALID_ARGUMENT and "pool_size" in e.value.message


def test_pool_size_is_the_configured_one(engine_backend):
    assert engine_backend.pool_size == POOL_SIZE
    assert json.loads(json.dumps(_full_pool(engine_backend).stats))["idle"] >= 1


@pytest.mark.parametrize("name", ["bwrap", pytest.param("docker", marks=pytest.mark.docker),
                                  pytest.param("gvisor", marks=pytest.mark.gvisor)])
def test_a_stop_order_kills_a_job_running_in_a_warm_sandbox(name):
    """A warm sandbox does not mount its job's staging folder, so the connector's stop order
    (an operator's cancel) reaches it through the backend that gave it the job."""
    import threading
    import time

    backend = _backend(name)
    assert backend.warm_up().wait_full(120), "the pool did not fill"
    request = SandboxRequest(algorithm=b"import time\ntime.sleep(600)\n", timeout_s=120)
    reports = []
    runner = threading.Thread(target=lambda: reports.append(backend.run(request)))
    runner.start()
    deadline = time.monotonic() + 60
    killed = []
    while not killed and time.monotonic() < deadline:
        time.sleep(0.5)
        killed = backend.kill_running()
    runner.join(60)
    assert killed and not runner.is_alive(), "the job was not stopped"
    assert reports and reports[0].status is not Status.OK
    assert backend.kill_running() == []  # nothing of it runs any more
    assert_no_trace(backend)
