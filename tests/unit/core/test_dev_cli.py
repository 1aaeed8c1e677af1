"""``yumen dev run`` and ``yumen dev mock``, parsed through ``register`` as the top-level CLI wires them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl
import pytest

from yumen.catalog import DatasetRegistration
from yumen.cli import _dev
from yumen.connectors import demo_registration, demo_registrations
from yumen.errors import Code, YumenError, exit_code
from yumen.mock import MOCK_FORMATS, mock_frame
from yumen.sandbox import BACKENDS, BwrapBackend, load_runtime


@pytest.fixture(autouse=True)
def _no_broker_credentials(monkeypatch):
    # the connection flags default to the environment when the parser is built
    for name in ("YUMEN_BROKER", "YUMEN_CA", "YUMEN_CERT", "YUMEN_KEY"):
        monkeypatch.delenv(name, raising=False)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yumen")
    _dev.register(p.add_subparsers(dest="command", required=True))
    return p


def invoke(*argv: str) -> int:
    args = parser().parse_args(["dev", *argv])
    return args.func(args)


@pytest.fixture
def catalog_file(tmp_path) -> Path:
    """Every demo registration, saved the way ``yumen catalog list --json`` prints them."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"datasets": [dict(d, online=True) for d in demo_registrations()]}))
    return path


@pytest.fixture(scope="module")
def sandbox_ready() -> None:
    try:
        load_runtime()
    except YumenError as e:
        pytest.skip(f"no sandbox runtime here: {e}")
    try:
        BwrapBackend().check()
    except YumenError as e:
        pytest.skip(f"bubblewrap cannot run here: {e}")


def test_register_adds_run_and_mock_with_every_sandbox_backend_and_connection_flags():
    p = parser()
    run = p.parse_args(["dev", "run", "a.py", "--dataset", "x", "--dataset", "y", "--rows", "50", "--seed", "4",
                        "--param", "k=1", "--backend", "gvisor", "--broker", "b:1", "--json"])
    assert (run.algorithm, run.dataset, run.rows, run.seed, run.backend, run.broker, run.json) == (
        "a.py", ["x", "y"], 50, 4, "gvisor", "b:1", True)
    assert run.func is _dev._run
    for name in BACKENDS:
        assert p.parse_args(["dev", "run", "a.py", "--backend", name]).backend == name
    with pytest.raises(SystemExit):
        p.parse_args(["dev", "run", "a.py", "--backend", "chroot"])
    mock = p.parse_args(["dev", "mock", "--dataset", "x", "--out", "m.csv", "--format", "csv"])
    assert (mock.dataset, mock.out, mock.format, mock.rows) == ("x", "m.csv", "csv", 1000)
    assert mock.func is _dev._mock
    for fmt in MOCK_FORMATS:
        assert p.parse_args(["dev", "mock", "--out", "m", "--format", fmt]).format == fmt
    assert _dev._FORMATS == MOCK_FORMATS


def test_mock_command_writes_a_readable_parquet_equal_to_the_library_mock(catalog_file, tmp_path, capsys):
    out = tmp_path / "bus.parquet"
    rc = invoke("mock", "--registration", str(catalog_file), "--dataset", "bus-trips", "--out", str(out),
                "--rows", "321", "--seed", "2", "--json")
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {"dataset": "bus-trips", "path": str(out), "format": "parquet", "rows": 321, "seed": 2}
    expected = mock_frame(DatasetRegistration.from_dict(demo_registration("bus-trips")), rows=321, seed=2)
    assert pl.read_parquet(out).equals(expected)


def test_mock_command_picks_csv_from_the_file_name_and_the_only_registration_in_the_file(tmp_path, capsys):
    single = tmp_path / "farm.json"
    single.write_text(json.dumps(demo_registration("farm-yields")))
    out = tmp_path / "farm.csv"
    assert invoke("mock", "--registration", str(single), "--out", str(out), "--rows", "7") == 0
    assert "7 rows" in capsys.readouterr().out
    frame = pl.read_csv(out)
    assert frame.height == 7 and frame.columns[0] == "farm_id" and frame["farm_id"][0] == "mock-000000"


def test_mock_command_needs_a_dataset_when_the_file_registers_several(catalog_file, tmp_path):
    with pytest.raises(YumenError) as e:
        invoke("mock", "--registration", str(catalog_file), "--out", str(tmp_path / "m.parquet"))
    assert e.value.code is Code.INVALID_ARGUMENT and "--dataset" in e.value.hint


def test_mock_command_asks_the_broker_catalog_when_no_file_is_given(monkeypatch, tmp_path):
    asked: list[str] = []

    class Catalog:  # the broker connection is the I/O edge; the mock and the file are real
        def __enter__(self):
            return self

        def __exit__(self, *_):
            return None

        def dataset(self, dataset_id: str):
            asked.append(dataset_id)
            return DatasetRegistration.from_dict(demo_registration(dataset_id)), False

    monkeypatch.setattr(_dev, "client", lambda args: Catalog())
    out = tmp_path / "scenic.parquet"
    assert invoke("mock", "--dataset", "scenic-visits", "--out", str(out), "--rows", "40") == 0
    assert asked == ["scenic-visits"] and pl.read_parquet(out).columns[0] == "visitor_id"


def test_without_a_registration_file_the_broker_connection_is_required():
    with pytest.raises(YumenError) as e:
        invoke("mock", "--dataset", "weather-daily", "--out", "m.parquet")
    assert e.value.code is Code.CONFIG and "--ca" in e.value.message


def test_run_without_any_dataset_says_how_to_name_one(tmp_path):
    algo = tmp_path / "a.py"
    algo.write_text("")
    with pytest.raises(YumenError) as e:
        invoke("run", str(algo))
    assert e.value.code is Code.INVALID_ARGUMENT and "--registration" in e.value.hint


@pytest.mark.parametrize(
    "content, code, needle",
    [(None, Code.NOT_FOUND, "no such file"), ("{nope", Code.INVALID_ARGUMENT, "not JSON"),
     ("[1, 2]", Code.INVALID_ARGUMENT, "neither"), ("[]", Code.INVALID_ARGUMENT, "no dataset")],
)
def test_unusable_registration_files_are_refused_with_the_reason(tmp_path, content, code, needle):
    path = tmp_path / "reg.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(YumenError) as e:
        invoke("mock", "--registration", str(path), "--out", str(tmp_path / "m.parquet"))
    assert e.value.code is code and needle in e.value.message


def test_a_dataset_missing_from_the_registration_file_is_named(catalog_file, tmp_path):
    with pytest.raises(YumenError) as e:
        invoke("mock", "--registration", str(catalog_file), "--dataset", "tax-returns", "--out", str(tmp_path / "m"))
    assert e.value.code is Code.NOT_FOUND and "tax-returns" in e.value.message and "weather-daily" in e.value.hint


_COUNT_UNITS = """\
import json, polars as pl
p = json.load(open('/data/params.json'))
w = pl.read_parquet('/data/input/weather-daily.parquet')
b = pl.read_parquet('/data/input/bus-trips.parquet')
per_card = b.group_by('card_id').len()['len']
json.dump({'weather_rows': w.height, 'bus_rows': b.height, 'max_trips_per_card': per_card.max(),
           'scaled': p['k'] * 2, 'label_len': len(p['label'])}, open('/data/output/result.json', 'w'))
"""


def test_run_executes_the_algorithm_on_mocks_in_the_sandbox_and_prints_one_json_report(
    sandbox_ready, catalog_file, tmp_path, capsys
):
    algo = tmp_path / "algo.py"
    algo.write_text(_COUNT_UNITS)
    rc = invoke("run", str(algo), "--registration", str(catalog_file), "--dataset", "weather-daily",
                "--dataset", "bus-trips", "--rows", "600", "--param", "k=21", "--param", "label=abc",
                "--timeout", "30", "--json")
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status"] == "ok" and out["backend"] == "bwrap"
    assert out["result"]["weather_rows"] == 600 and out["result"]["bus_rows"] == 600
    assert 1 <= out["result"]["max_trips_per_card"] <= 60
    assert out["result"]["scaled"] == 42 and out["result"]["label_len"] == 3
    assert out["mock"] == {"datasets": ["weather-daily", "bus-trips"], "rows": 600, "seed": 0}
    assert {"usage", "error", "runtime_digest"} <= set(out)


def test_run_of_a_failing_algorithm_exits_job_failed_and_shows_its_traceback(
    sandbox_ready, catalog_file, tmp_path, capsys
):
    algo = tmp_path / "broken.py"
    algo.write_text("raise RuntimeError('column mix-up in my code')\n")
    rc = invoke("run", str(algo), "--registration", str(catalog_file), "--dataset", "farm-yields", "--rows", "10")
    captured = capsys.readouterr()
    assert rc == exit_code(Code.JOB_FAILED) == 7
    assert captured.out.startswith("error:") and "farm-yields" in captured.out
    assert "column mix-up in my code" in captured.err  # mock data only, so the traceback is safe to show


def test_run_in_human_mode_prints_the_result_and_with_show_logs_the_algorithms_output(
    sandbox_ready, catalog_file, tmp_path, capsys
):
    algo = tmp_path / "hello.py"
    algo.write_text(
        "import json, polars as pl\n"
        "df = pl.read_parquet('/data/input/scenic-visits.parquet')\n"
        "print('columns', df.columns)\n"
        "json.dump({'rows': df.height}, open('/data/output/result.json', 'w'))\n"
    )
    rc = invoke("run", str(algo), "--registration", str(catalog_file), "--dataset", "scenic-visits",
                "--rows", "77", "--seed", "5", "--show-logs")
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.out.startswith("ok:") and "77 rows, seed 5" in captured.out
    assert "rows" in captured.out and "77" in captured.out.split("\n")[1]
    assert "columns ['visitor_id', 'site'" in captured.err
