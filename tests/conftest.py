"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_DSN_ENV = "YUMEN_TEST_POSTGRES_DSN"


def under_ci() -> bool:
    """CI sets ``CI`` (GitHub, GitLab and others use "true"); there nothing may be skipped for
    want of infrastructure."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A PostgreSQL DSN that answers: ``YUMEN_TEST_POSTGRES_DSN``, else the local server that
    ``scripts/setup_postgres.sh`` starts (idempotently). Without either the PostgreSQL cases
    skip, saying why, except under CI, which must provide the server: there they fail."""
    import psycopg

    dsn, source, reason = os.environ.get(POSTGRES_DSN_ENV, ""), POSTGRES_DSN_ENV, ""
    if not dsn:
        source = "scripts/setup_postgres.sh"
        try:
            out = subprocess.run(["bash", str(ROOT / "scripts" / "setup_postgres.sh")],
                                 capture_output=True, text=True, timeout=180)
            if out.returncode == 0 and out.stdout.strip():
                dsn = out.stdout.strip().splitlines()[-1]
            else:
                reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = str(exc)
    if dsn:
        try:
            psycopg.connect(dsn, connect_timeout=10).close()
            return dsn
        except psycopg.Error as exc:
            reason = f"cannot connect ({exc.__class__.__name__})"
    message = f"no PostgreSQL server: {source}: {reason}"
    if under_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def quiet_postgres_dsn(postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN on a PostgreSQL cluster of this test session's own, on a free port. Tests of what
    depends on the cluster-wide WAL position (a source's version cache) need a cluster nothing
    else writes to: on the shared server another test process may move it at any moment."""
    import socket
    import uuid

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # as root the server runs as the user 'postgres', which cannot enter pytest's 0700 tmp dirs
    base = Path("/var/lib/yumen") if os.geteuid() == 0 else tmp_path_factory.mktemp("pg")
    data = base / f"pg-quiet-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(["bash", str(ROOT / "scripts" / "setup_postgres.sh"), "--dir", str(data), "--port", str(port),
                          "--db", "quiet"], capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        pytest.fail(f"cannot start a private PostgreSQL cluster: {out.stderr.strip()[-500:]}")
    try:
        yield out.stdout.strip().splitlines()[-1]
    finally:
        ctl = next(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), None) or Path("/usr/local/bin/pg_ctl")
        stop = [str(ctl), "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + stop,
                       capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)
        Path(f"{data}.password").unlink(missing_ok=True)
def pytest_addoption(parser):
    parser.addoption(
        "--stress", action="store_true", default=False,
        help="the stress run (`make test-stress`): the e2e and sandbox suites and every test marked "
             "stress, while scripts/load.py keeps every core busy",
    )


STRESS_SUITES = ("e2e", "sandbox")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``stress`` run only when asked for (``make test-stress``, ``-m stress``):
    without a marker expression they are deselected, not skipped. With ``--stress`` the run is
    the e2e and sandbox suites plus every test marked ``stress``."""
    tests = Path(__file__).resolve().parent
    if config.getoption("stress"):
        def wanted(item) -> bool:
            rel = Path(str(item.path)).resolve().relative_to(tests)
            return rel.parts[0] in STRESS_SUITES or item.get_closest_marker("stress") is not None
    elif config.getoption("markexpr", ""):
        return
    else:
        def wanted(item) -> bool:
            return item.get_closest_marker("stress") is None
    keep, dropped = [], []
    for item in items:
        (keep if wanted(item) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session", autouse=True)
def cpu_load(request):
    """Under ``--stress``: every core kept busy by scripts/load.py for the whole session.

    The generator runs at normal priority, one spinning process per core; it is stopped when
    the session ends, and it stops by itself if this process dies first (``--parent``)."""
    if not request.config.getoption("stress"):
        yield None
        return
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "load.py"), "--parent", str(os.getpid())],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("load:"):
        proc.kill()
        proc.wait()
        pytest.fail(f"the load generator did not start: {line!r}")
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- under CI a test that cannot run is a failure --------------------------------------------
# A skip whose reason starts with this prefix is a deliberate one (the case does not apply to
# that parameter); every other skip means something the suite needs is missing (Docker,
# gVisor, bubblewrap, PostgreSQL, the sandbox runtime), and CI must provide all of it.
NOT_APPLICABLE = "not applicable:"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (under_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if reason.startswith("Skipped: "):
        reason = reason[len("Skipped: "):]
    if reason.startswith(NOT_APPLICABLE):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI, which must provide everything the suite needs "
                       f"(run `make infra`): {reason}")
