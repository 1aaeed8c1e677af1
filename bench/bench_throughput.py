"""Throughput of one broker and one connector under 1, 8 and 32 concurrent operators.

A real local data space (``yumen broker serve`` and ``yumen connector serve`` as processes,
mutual-TLS gRPC) serves the 1,000,000-row ``weather-daily`` dataset. Each operator has its
own certificate (same license) and its own channel, and submits DP queries back to back,
alternating a count and a count grouped by region: submit, watch until final, fetch the
result. Every query is decided, budgeted, logged (decided, executed, released), run and
noised exactly as in production.

Metrics (added to ``results``):

``query_throughput.c{1,8,32}.per_s``     DP queries completed per second with that many operators
``query_latency.c{1,8,32}.p50_ms``       each query's submit-to-result time, median
``query_latency.c{1,8,32}.p99_ms``       the same, 99th percentile
``query_throughput_plain.per_s``         baseline: the same two queries as plain Polars scans of
                                         the same Parquet file (every row read), one at a time

The operators run as threads of one client process, each with its own gRPC channel; the
client's own CPU (a few hundred microseconds per query) shares the machine with the broker
and the connector, as an operator's machine would not, so the figures are a lower bound.
The policy's per-license caps are raised for the run (every query spends ε = 1/1000), since
the default caps are sized for people, not for a flood.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

ROWS = 1_000_000
DATASET = "weather-daily"
LEVELS = (1, 8, 32)
SECONDS = {1: 8.0, 8: 10.0, 32: 12.0}  # measuring window per level, after a warm-up
WARMUP_S = 1.5
EPSILON = Fraction(1, 1000)


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _raise_caps(settings: Path) -> None:
    """Caps large enough for a flood of ε = 1/1000 queries; everything else as shipped."""
    text = settings.read_text()
    text = re.sub(r'(dataset_epsilon_cap|lifetime_epsilon_cap|epsilon_cap) = "\d+"', r'\1 = "1000000"', text)
    text = re.sub(r"max_runs = \d+", "max_runs = 100000000", text)
    settings.write_text(text)


def _requests(operator: int) -> Any:
    from yumen.jobs import Aggregate, JobRequest, Purpose, Query, Tier

    n = 0
    while True:
        query = Query(aggregate=Aggregate.COUNT, group_by="region" if n % 2 else "")
        yield JobRequest(job_id=f"tp-{operator}-{n}", datasets=(DATASET,), tier=Tier.QUERY,
                         purpose=Purpose.RESEARCH, epsilon=EPSILON, query=query)
        n += 1


def _one(client: Any, request: Any) -> float:
    t = time.perf_counter()
    info = client.submit(request)
    for _ in client.watch(info.job_id, timeout=120):
        pass
    result = client.result(info.job_id)
    if not result.values:
        raise RuntimeError(f"job {info.job_id} released no values")
    return time.perf_counter() - t


def _level(clients: list[Any], jobs: list[Any], seconds: float) -> tuple[float, list[float]]:
    """Run ``len(clients)`` operators for a warm-up plus ``seconds``: queries completed inside that window
    per second, and the latencies of the queries that ran wholly inside it."""
    start = time.perf_counter()
    window = (start + WARMUP_S, start + WARMUP_S + seconds)
    latencies: list[float] = []
    done = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()

    def operator(k: int) -> None:
        try:
            while time.perf_counter() < window[1]:
                began = time.perf_counter()
                took = _one(clients[k], next(jobs[k]))
                ended = began + took
                with lock:
                    if window[0] <= ended <= window[1]:
                        done[0] += 1  # completions inside the window make the rate
                        if began >= window[0]:
                            latencies.append(took)  # latencies of queries wholly inside it
        except BaseException as e:  # noqa: BLE001 - reported below, never swallowed
            errors.append(e)

    threads = [threading.Thread(target=operator, args=(k,)) for k in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} operators failed; first: {errors[0]!r}") from errors[0]
    if not latencies:
        raise RuntimeError("no query completed inside the measuring window")
    return done[0] / seconds, latencies


def _plain_per_s(path: Path) -> float:
    import polars as pl

    def count() -> None:
        pl.scan_parquet(path).select(pl.col("temp_mean_c").is_not_null().sum()).collect()

    def grouped() -> None:
        pl.scan_parquet(path).group_by("region").agg(pl.len()).collect()

    count(), grouped()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 3.0:
        (grouped if n % 2 else count)()
        n += 1
    return n / (time.perf_counter() - t)


def run(results: dict[str, float], *, levels: tuple[int, ...] = LEVELS) -> None:
    from yumen.identity import Role, issue
    from yumen.localspace import OPERATOR_LICENSE, Department, LocalSpace

    with tempfile.TemporaryDirectory(prefix="yumen-bench-tp-") as tmp:
        space = LocalSpace(Path(tmp) / "space", departments=(Department(id="weather-bureau", datasets=((DATASET, ROWS),)),))
        space.setup()
        _raise_caps(space.root / "policy.toml")
        names = [f"operator-{k + 1}" for k in range(max(levels))]
        for name in names[1:]:
            issue(space.pki, role=Role.OPERATOR, name=name, license=OPERATOR_LICENSE)
        with space:
            space.start(timeout=180)
            clients = [space.client(name) for name in names]
            try:
                jobs = [_requests(k) for k in range(len(names))]
                for k in range(len(names)):  # every channel connected, the connector's frame loaded
                    _one(clients[k], next(jobs[k]))
                for c in levels:
                    per_s, latencies = _level(clients[:c], jobs[:c], SECONDS[c])
                    results[f"query_throughput.c{c}.per_s"] = per_s
                    results[f"query_latency.c{c}.p50_ms"] = _percentile(latencies, 0.5) * 1000
                    results[f"query_latency.c{c}.p99_ms"] = _percentile(latencies, 0.99) * 1000
                    print(f"   c{c}: {per_s:.1f}/s, p50 {results[f'query_latency.c{c}.p50_ms']:.1f} ms, "
                          f"p99 {results[f'query_latency.c{c}.p99_ms']:.1f} ms", flush=True)
            finally:
                for client in clients:
                    client.close()
            results["query_throughput_plain.per_s"] = _plain_per_s(
                space.root / "data" / "weather-bureau" / f"{DATASET}.parquet")


if __name__ == "__main__":
    out: dict[str, float] = {}
    run(out)
    for key, value in sorted(out.items()):
        print(f"{key:36s} {value:10.2f}")
