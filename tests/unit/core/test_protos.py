"""The committed generated code must be exactly what ``make protos`` produces."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _generator():
    spec = importlib.util.spec_from_file_location("protos_generate", ROOT / "protos" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_generated_code_matches_a_fresh_generation(tmp_path):
    written = _generator().generate(tmp_path)
    assert written, "no proto produced any code"
    committed = ROOT / "protos" / "yumen" / "v1"
    fresh_names = {p.name for p in written}
    committed_names = {p.name for p in committed.glob("*_pb2*.py*")}
    assert fresh_names == committed_names, "generated files differ from committed ones: run `make protos`"
    for p in written:
        assert p.read_bytes() == (committed / p.name).read_bytes(), f"{p.name} is stale: run `make protos`"
