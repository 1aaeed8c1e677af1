"""A connector with one bad source: `check` reads it whole and says where it is wrong; `serve`
keeps the department's other datasets online; SIGTERM stops it cleanly, even while it retries."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from yumen.localspace import Department, LocalSpace

pytestmark = pytest.mark.e2e

ROWS = 30_001  # the bad value sits on the last row, far past the rows types are inferred from

RAIN = """
[[datasets]]
id = "rain"
title = "Rain gauges"
level = "L1"
privacy_unit = { column = "station_id", max_contributions = 1000 }
columns = [
  { name = "station_id", type = "string" },
  { name = "rain_mm", type = "int", lower = 0, upper = 30 },
  { name = "kind", type = "category", categories = ["gauge", "radar"] },
]
source = { kind = "csv", path = "rain.csv" }
"""


def _space(tmp_path, last_row: str) -> LocalSpace:
    space = LocalSpace(tmp_path / "space", departments=(Department(id="weather-bureau", datasets=(("weather-daily", 1_000),)),))
    space.setup()
    rows = [f"S{i % 50},{i % 30},{'gauge' if i % 2 else 'radar'}" for i in range(1, ROWS)]
    (space.root / "rain.csv").write_text("\n".join(["station_id,rain_mm,kind", *rows, last_row]) + "\n")
    config = space.root / "weather-bureau.toml"
    config.write_text(config.read_text() + RAIN)
    return space


def _check(space: LocalSpace) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "yumen", "connector", "check", "--config", "weather-bureau.toml"],
                          cwd=space.root, capture_output=True, text=True, timeout=600)


def _log(space: LocalSpace, name: str) -> str:
    return (space.root / "logs" / f"{name}.log").read_text(errors="replace")


def _wait_for(space: LocalSpace, name: str, text: str, count: int = 1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _log(space, name).count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} never appeared ×{count}:\n{_log(space, name)[-2000:]}"
        assert space.procs[name].poll() is None, _log(space, name)[-2000:]
        time.sleep(0.2)


def _sigterm(space: LocalSpace, name: str) -> int:
    proc = space.procs.pop(name)
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)  # a hang guard, not a timing: a clean stop is the assertion


def test_check_reads_the_whole_csv_and_names_the_row_and_column_of_a_bad_value(tmp_path):
    space = _space(tmp_path, "S1,n/a,gauge")
    proc = _check(space)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    problem = [line for line in proc.stdout.splitlines() if line.startswith("problem: dataset rain")]
    assert problem and f"row {ROWS:,}" in problem[0] and "'rain_mm'" in problem[0], proc.stdout
    assert "n/a" not in proc.stdout  # the row and column, never the value
    assert "dataset weather-daily: ok" in proc.stdout and "Traceback" not in proc.stderr


def test_check_reports_values_outside_the_bounds_and_undeclared_categories(tmp_path):
    space = _space(tmp_path, "S1,45,satellite")
    proc = _check(space)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning: dataset rain: 1 value(s) of column 'rain_mm' lie outside the declared bounds [0, 30]" in proc.stdout
    assert "warning: dataset rain: 1 value(s) of column 'kind' are not among its declared categories" in proc.stdout
    assert "satellite" not in proc.stdout


def test_one_bad_dataset_does_not_take_the_others_down_and_sigterm_stops_the_connector(tmp_path):
    space = _space(tmp_path, "S1,n/a,gauge")
    try:
        space.start_broker()
        space.issue_license()
        space.start_connector("weather-bureau")
        space.wait_online(["weather-daily"], timeout=120)
        with space.client() as c:
            online = {reg.id for reg, on in c.catalog() if on}
        assert "weather-daily" in online and "rain" not in online
        _wait_for(space, "weather-bureau", "dataset rain not offered")
        assert "row 30,001" in _log(space, "weather-bureau")
        assert _sigterm(space, "weather-bureau") == 0
        log = _log(space, "weather-bureau")
        assert "Traceback" not in log and "FATAL" not in log, log[-3000:]
    finally:
        space.stop()


def test_sigterm_stops_a_connector_that_keeps_retrying(tmp_path):
    """No broker answers and one source fails: the connector retries both, and stops at once
    (exit 0, no traceback, no abort) when told to."""
    space = _space(tmp_path, "S1,n/a,gauge")
    try:
        space.start_connector("weather-bureau")
        _wait_for(space, "weather-bureau", "dataset rain not offered", count=2)
        _wait_for(space, "weather-bureau", "broker stream ended", count=2)
        assert _sigterm(space, "weather-bureau") == 0
        log = _log(space, "weather-bureau")
        assert "Traceback" not in log and "FATAL" not in log, log[-3000:]
    finally:
        space.stop()
