"""The benchmark tables in docs/ are what bench/results.json says, and nothing else."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _tables():
    spec = importlib.util.spec_from_file_location("bench_docs_tables", ROOT / "bench" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_docs_table_agrees_with_results_json() -> None:
    tables = _tables()
    assert tables.pages(), "no page carries a bench table"
    assert tables.stale() == [], "run `python -m bench.docs_tables` after a bench run"


def test_a_hand_edited_figure_is_caught(tmp_path: Path) -> None:
    tables = _tables()
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    results = tmp_path / "results.json"
    data = {"meta": {"date": "2026-01-01T00:00:00Z", "commit": "abc", "cores": 2, "memory_gb": 8,
                     "load_average_before": [0.5, 0.5, 0.5]},
            "results": {"log_verify_1m.s": 7.25, "log_verify_1m_loaded.s": 9.5}}
    results.write_text(json.dumps(data))
    for other in tables.pages(docs):
        other.write_text(tables.update(other.read_text(), data))
    assert tables.stale(results, docs) == []
    page = docs / "audit.md"
    text = page.read_text()
    assert "| 7.25 s |" in text and "9.50 s (1.31× the baseline)" in text
    assert "`log_append.per_s` | not measured in this run |" in text  # never carried over
    page.write_text(text.replace("| 7.25 s |", "| 6.10 s |"))
    assert tables.stale(results, docs) == ["docs/audit.md"]


def test_every_table_row_names_a_key_the_benchmarks_write() -> None:
    tables = _tables()
    sources = "".join(p.read_text() for p in (ROOT / "bench").glob("bench_*.py"))
    for name, rows in tables.TABLES.items():
        for row in rows:
            stem = row.key.rsplit(".", 1)[0].split(".c")[0]
            assert stem.split(".")[0] in sources, f"table {name}: no benchmark writes {row.key}"
