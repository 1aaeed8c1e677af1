"""Write the benchmark tables in ``docs/*.md`` from ``bench/results.json``.

Docs quote measured figures only through tables generated here, between markers::

    <!-- bench-table: audit -->
    (generated: the run's date, commit, machine and load, then one row per figure)
    <!-- /bench-table -->

``python -m bench.docs_tables`` rewrites every such block; ``--check`` changes nothing and
exits 1 when a block differs from what results.json gives (a unit test runs the check, so a
hand-edited number or a stale table fails). A figure the run did not measure is printed as
"not measured in this run", never carried over from an older run.

Adding a table: a name and its rows in :data:`TABLES`, and the two markers in a page.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Row:
    key: str  # the key in results.json
    label: str  # what it measures, for a reader
    unit: str = ""  # printed after the value
    digits: int = 1  # decimals
    baseline: str = ""  # the key of the baseline measured beside it, if any


TABLES: dict[str, tuple[Row, ...]] = {
    "audit": (
        Row("log_append.per_s", "durable appends, batches of 500 (WAL, synchronous=FULL)", "/s", 0),
        Row("log_append_single.per_s", "one transaction (one fsync) per append (baseline)", "/s", 0),
        Row("log_append_threads.per_s", "single appends from 16 threads (group commit)", "/s", 0,
            baseline="log_append_single.per_s"),
        Row("log_proof_1m.ms", "inclusion proof in a 1,000,000-entry log, median", "ms", 3),
        Row("log_consistency_1m.ms", "consistency proof in the same log, median", "ms", 3),
        Row("log_build_1m.s", "building that log (bulk appends of 100,000)", "s", 2),
        Row("log_export_1m.s", "exporting it", "s", 2),
        Row("log_verify_1m.s", "verifying the export (wall), no load added by the benchmark", "s", 2),
        Row("log_verify_1m.cpu_s", "the same in CPU seconds (all processes)", "s", 2),
        Row("log_verify_1m_loaded.s", "the same with every other core kept busy by a spinning process (wall)", "s", 2,
            baseline="log_verify_1m.s"),
    ),
    "throughput": (
        Row("query_throughput.c1.per_s", "DP queries/s, 1 operator", "/s", 1),
        Row("query_latency.c1.p50_ms", "latency, 1 operator, median", "ms", 1),
        Row("query_latency.c1.p99_ms", "latency, 1 operator, 99th percentile", "ms", 1),
        Row("query_throughput.c8.per_s", "DP queries/s, 8 operators", "/s", 1),
        Row("query_latency.c8.p50_ms", "latency, 8 operators, median", "ms", 1),
        Row("query_latency.c8.p99_ms", "latency, 8 operators, 99th percentile", "ms", 1),
        Row("query_throughput.c32.per_s", "DP queries/s, 32 operators", "/s", 1),
        Row("query_latency.c32.p50_ms", "latency, 32 operators, median", "ms", 1),
        Row("query_latency.c32.p99_ms", "latency, 32 operators, 99th percentile", "ms", 1),
        Row("query_throughput_plain.per_s", "baseline: the same queries as plain Polars scans, one at a time",
            "/s", 1),
    ),
    "e2e": (
        Row("query_dp_count_1m.p50_ms", "DP count on 1,000,000 rows, operator to released result, median", "ms", 2,
            baseline="query_plain_count_1m.p50_ms"),
        Row("query_plain_count_1m.p50_ms", "baseline: plain Polars scan reading every row of the file", "ms", 2),
    ),
    "policy": (
        Row("policy_decide_10k.p50_ms", "whole decision (license read + gates + Casbin), median", "ms", 3),
        Row("policy_decide_10k.p99_ms", "the same, 99th percentile", "ms", 3),
        Row("policy_decide_10k.store_read_p50_ms", "baseline: the license read alone, median", "ms", 3),
        Row("policy_decide_10k.casbin_p50_ms", "Casbin's enforce_ex alone, median", "ms", 3),
        Row("policy_decide_10k.per_s", "decisions per second, one thread", "/s", 0),
    ),
    "privacy": (
        Row("dp_query_1m.p50_ms", "dp_query count, 1 M rows, row-level units", "ms", 2),
        Row("dp_query_1m_units.p50_ms", "the same, 300 k units truncated in the call", "ms", 1),
        Row("dp_groupby_10m.ratio_to_polars", "count+sum+mean by district, 10 M rows, vs one plain group-by", "×", 2),
        Row("dp_groupby_10m_separate.ratio_to_polars", "three dp_query vs three plain group-bys", "×", 2),
        Row("dp_groupby_10m_bounded.ratio_to_polars", "2 M units ≤ 8 rows, on a BoundedFrame", "×", 2),
        Row("dp_groupby_10m_units.ratio_to_polars", "the same, truncating inside the call", "×", 2),
        Row("bound_contributions_10m.ms", "truncating 10 M rows to 8 per unit, once per version", "ms", 0),
        Row("dp_count_1m_opendp_polars_release.p50_ms", "stock OpenDP Context release of a count", "ms", 0),
        Row("he_combine_20x4096.ms", "broker-side sum of 20 departments' 4,096-slot CKKS vectors", "ms", 1),
    ),
    "sources": (
        Row("scan_sum.parquet.rows_per_s", "Parquet source, 10,000,000 rows", "rows/s", 0,
            baseline="scan_sum.polars_parquet.rows_per_s"),
        Row("scan_sum.polars_parquet.rows_per_s", "baseline: plain pl.scan_parquet of the same file", "rows/s", 0),
        Row("scan_sum.csv.rows_per_s", "CSV source, the same rows", "rows/s", 0),
        Row("scan_sum.sqlite.rows_per_s", "SQLite source, 1,000,000 rows", "rows/s", 0),
        Row("scan_sum.postgres.rows_per_s", "PostgreSQL source (primary-key order), 1,000,000 rows", "rows/s", 0),
        Row("version.parquet.rows_per_s", "full content digest of the Parquet file", "rows/s", 0),
    ),
    "verification": (
        Row("verify_10m.per_s", "verifications/s, 10,000,000 rows, 16 in flight", "/s", 0),
        Row("verify_10m_sequential.per_s", "verifications/s, one at a time", "/s", 0),
        Row("verify_10m_plain_indexed_lookup.per_s", "baseline: plain lookups of the same identifiers, same index",
            "/s", 0),
        Row("verify_10m_index_build.s", "building the index, once per data version", "s", 1),
    ),
    "sandbox": (
        Row("sandbox_start.bare.p50_ms", "bare python3, no isolation (baseline)", "ms", 1),
        Row("sandbox_start_cold.bwrap.p50_ms", "bubblewrap, cold start", "ms", 1, baseline="sandbox_start.bare.p50_ms"),
        Row("sandbox_start.bwrap.p50_ms", "bubblewrap, warm sandbox", "ms", 1, baseline="sandbox_start_cold.bwrap.p50_ms"),
        Row("sandbox_start_cold.docker.p50_ms", "Docker (runc), cold start", "ms", 1, baseline="sandbox_start.bare.p50_ms"),
        Row("sandbox_start.docker.p50_ms", "Docker (runc), warm sandbox (target ≤ 40 ms)", "ms", 1,
            baseline="sandbox_start_cold.docker.p50_ms"),
        Row("sandbox_start_cold.gvisor.p50_ms", "Docker with gVisor (runsc), cold start", "ms", 1,
            baseline="sandbox_start.bare.p50_ms"),
        Row("sandbox_start.gvisor.p50_ms", "Docker with gVisor (runsc), warm sandbox (target ≤ 60 ms)", "ms", 1,
            baseline="sandbox_start_cold.gvisor.p50_ms"),
        Row("sandbox_mem.bwrap.kb", "bubblewrap, peak RSS of the trivial algorithm", "kB", 0),
        Row("sandbox_mem.docker.kb", "Docker, peak RSS of the trivial algorithm", "kB", 0),
        Row("sandbox_mem.gvisor.kb", "gVisor, peak RSS of the trivial algorithm", "kB", 0),
    ),
    "sample_aggregate": (
        Row("sample_aggregate_k20.single_ms", "one run on all rows (baseline)", "ms", 0),
        Row("sample_aggregate_k20.ms", "k = 20 blocks, wall time under the fixed wave schedule", "ms", 0,
            baseline="sample_aggregate_k20.single_ms"),
        Row("sample_aggregate_k20.busy_ms", "k = 20 blocks, the blocks' own time (slowest per wave, summed)", "ms", 0,
            baseline="sample_aggregate_k20.single_ms"),
        Row("sample_aggregate_k20.warm_blocks", "blocks that found a warm sandbox (of 20)", "", 0),
    ),
}

_BLOCK = re.compile(r"(<!-- bench-table: ([\w-]+) -->\n)(.*?)(<!-- /bench-table -->)", re.S)


def _number(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def render(name: str, data: dict[str, Any]) -> str:
    """The generated text of table ``name`` (without its markers)."""
    if name not in TABLES:
        raise KeyError(f"no bench table named {name!r}; known: {', '.join(TABLES)}")
    meta, results = data.get("meta", {}), data.get("results", {})
    load = meta.get("load_average_before", [])
    lines = [
        f"Generated from bench/results.json by `python -m bench.docs_tables`: run of {meta.get('date', '?')}, "
        f"commit {str(meta.get('commit', '?'))[:10]}, {meta.get('cores', '?')} cores, {meta.get('memory_gb', '?')} GB, "
        f"load average {load[0] if load else '?'} before the run (a shared machine: figures are noisy).",
        "",
        "| figure | key | value |",
        "|---|---|---|",
    ]
    for row in TABLES[name]:
        value = results.get(row.key)
        if value is None:
            cell = "not measured in this run"
        else:
            cell = f"{_number(value, row.digits)} {row.unit}".strip()
            base = results.get(row.baseline) if row.baseline else None
            if base:
                cell += f" ({value / base:.2f}× the baseline)"
        lines.append(f"| {row.label} | `{row.key}` | {cell} |")
    return "\n".join(lines) + "\n"


def update(text: str, data: dict[str, Any]) -> str:
    """``text`` with every bench-table block regenerated."""
    return _BLOCK.sub(lambda m: m.group(1) + render(m.group(2), data) + m.group(4), text)


def pages(docs: Path = DOCS) -> list[Path]:
    return sorted(p for p in docs.glob("*.md") if "<!-- bench-table:" in p.read_text(encoding="utf-8"))


def stale(results: Path = RESULTS, docs: Path = DOCS) -> list[str]:
    """The pages whose tables disagree with ``results``."""
    data = json.loads(results.read_text(encoding="utf-8"))
    return [str(p.relative_to(docs.parent)) for p in pages(docs)
            if update(p.read_text(encoding="utf-8"), data) != p.read_text(encoding="utf-8")]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docs_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table is stale")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.check:
        bad = stale(args.results)
        for page in bad:
            print(f"{page}: a bench table disagrees with {args.results}; run `python -m bench.docs_tables`",
                  file=sys.stderr)
        return 1 if bad else 0
    data = json.loads(args.results.read_text(encoding="utf-8"))
    for page in pages():
        text = page.read_text(encoding="utf-8")
        new = update(text, data)
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"updated {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
