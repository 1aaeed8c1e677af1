"""``yumen sandbox ...`` parsed through ``register`` exactly as the top-level CLI wires it."""

from __future__ import annotations

import argparse
import json

import pytest

from yumen.errors import YumenError
from yumen.sandbox import Status
from yumen.sandbox._cli import STATUS_EXIT_CODES, parse_param, register


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yumen")
    register(p.add_subparsers(dest="command", required=True))
    return p


def test_register_adds_run_build_runtime_and_check_with_handlers():
    p = parser()
    run = p.parse_args(["sandbox", "run", "--backend", "docker", "--data", "a.csv", "--param", "k=2", "algo.py"])
    assert run.backend == "docker" and [str(d) for d in run.data] == ["a.csv"] and callable(run.func)
    build = p.parse_args(["sandbox", "build-runtime", "--dir", "/x", "--docker"])
    assert str(build.dir) == "/x" and build.docker and callable(build.func)
    assert callable(p.parse_args(["sandbox", "check"]).func)


def test_parse_param_uses_json_when_it_parses_else_the_string():
    assert parse_param("eps=0.5") == ("eps", 0.5)
    assert parse_param("cols=[\"a\",\"b\"]") == ("cols", ["a", "b"])
    assert parse_param("name=alice") == ("name", "alice")
    with pytest.raises(YumenError):
        parse_param("novalue")


def test_every_status_has_a_distinct_exit_code_and_only_ok_is_zero():
    assert set(STATUS_EXIT_CODES) == set(Status)
    assert len(set(STATUS_EXIT_CODES.values())) == len(Status)
    assert [s for s, c in STATUS_EXIT_CODES.items() if c == 0] == [Status.OK]


def test_run_prints_one_json_report_and_exits_by_status(bwrap_backend, tmp_path, capsys):
    csv = tmp_path / "sales.csv"
    csv.write_text("amount\n1\n2\n3\n")
    algo = tmp_path / "algo.py"
    algo.write_text(
        "import json, polars as pl\n"
        "p = json.load(open('/data/params.json'))\n"
        "s = pl.read_parquet('/data/input/sales.parquet')['amount'].sum()\n"
        "print('debug')\n"
        "json.dump({'s': s * p['k'], 'n': len(p['name'])}, open('/data/output/result.json', 'w'))\n"
    )
    args = parser().parse_args(["sandbox", "run", "--data", str(csv), "--param", "k=10", "--param", "name=bob", str(algo)])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "ok" and out["result"] == {"s": 60.0, "n": 3.0}
    assert {"usage", "error", "backend", "runtime_digest"} <= set(out) and "debug" not in json.dumps(out)

    algo.write_text("raise SystemExit(1)")
    args = parser().parse_args(["sandbox", "run", "--timeout", "5", str(algo)])
    assert args.func(args) == STATUS_EXIT_CODES[Status.ERROR]
    assert json.loads(capsys.readouterr().out)["status"] == "error"
