"""Shared fixtures for the sandbox escape suite: one fixture per available backend.

Each backend is checked once per session; a backend that cannot run here is skipped with
the reason its ``check()`` gave (e.g. no Docker engine, no runsc runtime, no runtime
image). CI provides all three; see docs/sandbox.md.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time

import pytest

from yumen.errors import YumenError
from yumen.sandbox import get_backend
from yumen.sandbox._docker import OWNER_LABEL, _owner
from yumen.sandbox._pool import POOL_LABEL, pools, reaper


def pytest_configure(config):
    config.addinivalue_line("markers", "docker: needs a running Docker engine")
    config.addinivalue_line("markers", "gvisor: needs Docker with the runsc runtime")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_unconfigure(config):
    # Empty when every job cleaned up after itself; a leftover keeps the evidence.
    try:
        os.rmdir(STAGING_DIR)
    except OSError:
        pass


_CHECKED: dict[str, object] = {}

# This session's bubblewrap jobs run as host user ids from a range of its own, drawn at random
# from a span no other Yumen component uses, and a private staging directory serves the
# session: other sandboxes on the same host (a connector, another test run, the stress run's
# twin) can neither be mistaken for traces of these tests nor be blamed on them; tests run one
# after another, so a trace is found by the test that left it.
# (bubblewrap's uid map takes ids below 2**31; connectors use 2,000,000,000 and up by default.)
_UID_SPAN = range(2_100_000_000, 2_147_000_000)
_UIDS_PER_SESSION = 100_000
_UID_BASE = _UID_SPAN.start + secrets.randbelow(len(_UID_SPAN) // _UIDS_PER_SESSION - 1) * _UIDS_PER_SESSION
JOB_UID_RANGE = range(_UID_BASE, _UID_BASE + _UIDS_PER_SESSION)
STAGING_DIR = tempfile.mkdtemp(prefix="yumen-escape-suite-")
os.chmod(STAGING_DIR, 0o711)  # job users must traverse it to reach staged inputs
# Every backend runs with warm sandboxes on (as connectors do by default), so every escape
# test below whose shape is warmed runs in a sandbox taken from the pool; their private
# directories live apart from STAGING_DIR, which must be empty after each job.
POOL_SIZE = 2
POOL_DIR = tempfile.mkdtemp(prefix="yumen-escape-pool-")
os.chmod(POOL_DIR, 0o711)
SESSION_STARTED = time.time()


def _backend(name: str):
    if name not in _CHECKED:
        options = {"staging_dir": STAGING_DIR}
        if name == "bwrap":
            options.update(uid_base=JOB_UID_RANGE.start, uid_count=len(JOB_UID_RANGE))
        options.update(pool_size=POOL_SIZE, pool_dir=POOL_DIR)
        backend = get_backend(name, **options)
        try:
            backend.check()
            backend.warm_up().wait_full(120)
            _CHECKED[name] = backend
        except YumenError as e:
            _CHECKED[name] = f"{name} backend unavailable: {e}"
    value = _CHECKED[name]
    if isinstance(value, str):
        pytest.skip(value)
    return value


@pytest.fixture(
    params=[
        "bwrap",
        pytest.param("docker", marks=pytest.mark.docker),
        pytest.param("gvisor", marks=pytest.mark.gvisor),
    ]
)
def backend(request):
    return _backend(request.param)


def _alive(pid: str) -> bool:
    """Running or sleeping; a zombie has already died and only waits for its parent's wait()."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _containers_created_since(backend, since: float) -> set[str]:
    """Ids of the containers this process created since ``since`` (removed ones included):
    the engine's event history, filtered by the owner label every sandbox container carries."""
    events = backend.client.events(
        since=int(since) - 1, until=int(time.time()) + 1, decode=True,
        filters={"type": "container", "event": "create", "label": f"{OWNER_LABEL}={_owner()}"},
    )
    return {e["id"] for e in events if e.get("id")}


def idle_bwrap_uids() -> set[int]:
    """Host uids of idle warm bubblewrap sandboxes: started, never given a job, not a job's trace."""
    return {sandbox.uid for pool in pools() if pool.name == "bwrap" for sandbox in pool.idle()}


def idle_container_ids() -> set[str]:
    """Warm containers not yet taken: this process's, but they have run nothing."""
    return set().union(*(pool.idle_ids() for pool in pools() if pool.name != "bwrap"))


def leftover_sandbox_processes(*, containers: frozenset[str] = frozenset()) -> list[int]:
    """Host processes still alive of this session's own jobs: running as one of its job users
    (bubblewrap; idle warm sandboxes aside), or in, or serving, one of ``containers`` (the
    container's cgroup, the shim and gVisor's sentry name the container id). Nobody else's
    sandbox counts."""
    found = []
    idle = idle_bwrap_uids()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if not _alive(entry.name):
                continue
            if entry.stat().st_uid in JOB_UID_RANGE and entry.stat().st_uid not in idle:
                found.append(int(entry.name))
                continue
            if not containers:
                continue
            with open(f"/proc/{entry.name}/cgroup", "rb") as f:
                text = f.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                text += f.read()
            if any(c.encode() in text for c in containers):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def no_trace():
    """The after-job check, bound to this test: only its own jobs' traces count."""
    started = time.time()
    return lambda backend: assert_no_trace(backend, since=started)


def assert_no_trace(backend, *, since: float = SESSION_STARTED) -> None:
    """After a job: no process, container, cgroup or staging directory of it remains.

    Container engines tear down their shim and (gVisor) sentry processes asynchronously
    after a container is removed, so processes get a short grace period to finish dying.
    """
    assert reaper().drain(60.0), "used sandbox containers were not removed"
    for pool in pools():
        pool.wait_full(120.0)  # a sandbox being started is not yet idle: let it finish
    containers = frozenset(_containers_created_since(backend, since) - idle_container_ids()) \
        if backend.name != "bwrap" else frozenset()

    def left() -> list[int]:
        return leftover_sandbox_processes(containers=containers)

    grace = time.monotonic() + (1.0 if backend.name == "bwrap" else 5.0)
    while left() and time.monotonic() < grace:
        time.sleep(0.05)
    assert left() == []
    assert os.listdir(STAGING_DIR) == []
    if backend.name != "bwrap":
        # Warm containers not yet taken (idle or still starting) are this process's too, but
        # have run nothing; every container a job used must be gone.
        used = set().union(*(p.taken_ids for p in pools()))
        left_containers = backend.client.api.containers(all=True, filters={"label": f"{OWNER_LABEL}={_owner()}"})
        assert [c["Id"] for c in left_containers
                if (c.get("Labels") or {}).get(POOL_LABEL) != "1" or c["Id"] in used] == []
