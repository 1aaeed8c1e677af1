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

# Each test's bubblewrap jobs run as host user ids from a range of their own, drawn at random
# from a span no other Yumen component uses, and a private staging directory serves the
# session: other sandboxes on the same host (a connector, another test run, the stress run's
# twin) can neither be mistaken for traces of these tests nor be blamed on them.
# (bubblewrap's uid map takes ids below 2**31; connectors use 2,000,000,000 and up by default.)
_UID_SPAN = range(2_100_000_000, 2_147_000_000)
_UIDS_PER_TEST = 1_000
STAGING_DIR = tempfile.mkdtemp(prefix="yumen-escape-suite-")
os.chmod(STAGING_DIR, 0o711)  # job users must traverse it to reach staged inputs

# backend object -> the host uids its jobs run as (bwrap only)
_JOB_UIDS: dict[int, range] = {}


def _backend(name: str):
    if name not in _CHECKED:
        backend = get_backend(name, staging_dir=STAGING_DIR)
        try:
            backend.check()
            _CHECKED[name] = backend
        except YumenError as e:
            _CHECKED[name] = f"{name} backend unavailable: {e}"
    value = _CHECKED[name]
    if isinstance(value, str):
        pytest.skip(value)
    if name == "bwrap":
        base = _UID_SPAN.start + secrets.randbelow((len(_UID_SPAN) - _UIDS_PER_TEST) // _UIDS_PER_TEST) * _UIDS_PER_TEST
        value = get_backend(name, staging_dir=STAGING_DIR, uid_base=base, uid_count=_UIDS_PER_TEST)
        _JOB_UIDS[id(value)] = range(base, base + _UIDS_PER_TEST)
    return value


@pytest.fixture(
    params=[
        "bwrap",
        pytest.param("docker", marks=pytest.mark.docker),
        pytest.param("gvisor", marks=pytest.mark.gvisor),
    ]
)
def backend(request):
    value = _backend(request.param)
    yield value
    _JOB_UIDS.pop(id(value), None)


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


def leftover_sandbox_processes(*, uids: range | None = None, containers: frozenset[str] = frozenset()) -> list[int]:
    """Host processes still alive of this test's own jobs: running as one of its job users
    (bubblewrap), or in, or serving, one of its containers (the container's cgroup, the shim
    and gVisor's sentry name the container id). Nobody else's sandbox counts."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if not _alive(entry.name):
                continue
            if uids is not None and entry.stat().st_uid in uids:
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


def assert_no_trace(backend, *, since: float) -> None:
    """After a job: no process, container, cgroup or staging directory of it remains.

    Container engines tear down their shim and (gVisor) sentry processes asynchronously
    after a container is removed, so processes get a short grace period to finish dying.
    """
    uids = _JOB_UIDS.get(id(backend))
    containers = frozenset(_containers_created_since(backend, since)) if backend.name != "bwrap" else frozenset()

    def left() -> list[int]:
        return leftover_sandbox_processes(uids=uids, containers=containers)

    grace = time.monotonic() + (1.0 if backend.name == "bwrap" else 5.0)
    while left() and time.monotonic() < grace:
        time.sleep(0.05)
    assert left() == []
    assert os.listdir(STAGING_DIR) == []
    if backend.name != "bwrap":
        left_containers = backend.client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={_owner()}"})
        assert left_containers == []
