"""Every status, produced by real algorithms under the bubblewrap backend."""

from __future__ import annotations

import json

import polars as pl
import pytest

from yumen.sandbox import SandboxRequest, Status

WRITE = "open('/data/output/result.json', 'w').write({!r})\n"


def run(backend, source: str, **kw):
    kw.setdefault("timeout_s", 10)
    return backend.run(SandboxRequest(algorithm=source.encode(), **kw))


def test_ok_reads_inputs_and_params_and_returns_the_result(bwrap_backend, tmp_path):
    data = tmp_path / "people.parquet"
    pl.DataFrame({"age": [30, 40, 50]}).write_parquet(data)
    source = (
        "import json, polars as pl, numpy, pyarrow\n"
        "k = json.load(open('/data/params.json'))['k']\n"
        "df = pl.read_parquet('/data/input/people.parquet')\n"
        "print('rows', df.height)\n"
        "json.dump({'total': float(df['age'].sum()) * k}, open('/data/output/result.json', 'w'))\n"
    )
    report = run(bwrap_backend, source, inputs={"people": data}, params={"k": 2})
    assert report.status is Status.OK, report.stderr
    assert report.result == {"total": 240.0}
    assert report.stdout == b"rows 3\n"
    assert report.backend == "bwrap" and report.runtime_digest.startswith("sha256:")
    assert report.usage.wall_ms > 0 and report.usage.result_bytes > 0


def test_error_when_the_algorithm_exits_nonzero(bwrap_backend):
    report = run(bwrap_backend, WRITE.format('{"a": 1}') + "raise SystemExit(3)")
    assert report.status is Status.ERROR and report.exit_code == 3 and report.result is None


def test_error_keeps_the_traceback_for_the_department_only(bwrap_backend):
    report = run(bwrap_backend, "raise ValueError('row 42 is odd')")
    assert report.status is Status.ERROR
    assert b"row 42 is odd" in report.stderr
    assert "row 42" not in json.dumps(report.to_json())


def test_timeout_on_an_infinite_loop(bwrap_backend):
    report = run(bwrap_backend, "while True: pass", timeout_s=1)
    assert report.status is Status.TIMEOUT
    assert 1000 <= report.usage.wall_ms < 5000


def test_timeout_when_the_cpu_budget_runs_out_before_the_wall_clock(bwrap_backend):
    report = run(bwrap_backend, "while True: pass", timeout_s=20, cpu_time_s=1)
    assert report.status is Status.TIMEOUT
    assert report.usage.wall_ms < 10000


@pytest.mark.parametrize(
    "source",
    [
        "x = bytearray(1024 ** 3)",
        "import numpy as np\nx = np.ones(1024 ** 3 // 8)\nx += 1",
        "chunks = []\nwhile True: chunks.append(bytearray(32 * 1024 ** 2))",
    ],
)
def test_memory_when_the_algorithm_exceeds_its_memory_limit(bwrap_backend, source):
    report = run(bwrap_backend, source, memory_mb=256)
    assert report.status is Status.MEMORY, (report.error, report.stderr[-300:])


def test_killed_by_a_signal(bwrap_backend):
    report = run(bwrap_backend, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert report.status is Status.KILLED and "SIGSEGV" in report.error


def test_output_too_large(bwrap_backend):
    report = run(bwrap_backend, WRITE.format('{"a": ' + "1" * 2000 + "}"), output_limit_bytes=1000)
    assert report.status is Status.OUTPUT_TOO_LARGE and report.result is None


@pytest.mark.parametrize(
    "content",
    ['{"a": NaN}', "[1, 2]", '{"a": {"b": 1}}', "not json", '{"a": "text"}', "[" * 20000 + "]" * 20000],
)
def test_invalid_output(bwrap_backend, content):
    report = run(bwrap_backend, WRITE.format(content))
    assert report.status is Status.INVALID_OUTPUT and report.result is None


def test_invalid_output_when_no_result_is_written(bwrap_backend):
    report = run(bwrap_backend, "print('forgot')")
    assert report.status is Status.INVALID_OUTPUT and "no /data/output/result.json" in report.error


def test_invalid_output_when_too_many_keys(bwrap_backend):
    report = run(bwrap_backend, "import json\njson.dump({str(i): i for i in range(50)}, open('/data/output/result.json','w'))",
                 max_result_keys=10)
    assert report.status is Status.INVALID_OUTPUT


def test_logs_are_capped_but_counted(bwrap_backend):
    report = run(bwrap_backend, "import sys\nsys.stdout.write('x' * 100000)\n" + WRITE.format('{"a": 1}'), log_limit_bytes=1000)
    assert report.status is Status.OK
    assert report.stdout == b"x" * 1000 and report.usage.stdout_bytes == 100000


def test_unreadable_inputs_are_still_visible_read_only(bwrap_backend, tmp_path):
    data = tmp_path / "private.parquet"
    pl.DataFrame({"v": [1.5]}).write_parquet(data)
    data.chmod(0o600)
    source = "import polars as pl\nv = pl.read_parquet('/data/input/private.parquet')['v'][0]\n" + \
        "open('/data/output/result.json','w').write('{\"v\": %s}' % v)"
    report = run(bwrap_backend, source, inputs={"private": data})
    assert report.status is Status.OK, report.stderr
    assert report.result == {"v": 1.5}
