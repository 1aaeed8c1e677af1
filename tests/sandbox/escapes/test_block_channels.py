"""Colluding blocks: nothing one block does shows in what a later block can measure.

Blocks that share a sandbox share its kernel counters and its age: a block that starts
many processes moves the next block's pid, one that creates files moves the next block's
inode numbers, and the time since the sandbox started (or the time the next block starts
at all) tells how long an earlier block ran. Every block here first measures all of these,
then (in the colluding run) does its best to move them: forks processes, creates files in
every writable place, and sleeps most of its time limit. The same job runs twice, through
the connector's own ``run_blocks`` (fresh sandbox per block, waves at fixed offsets), once
colluding and once not; every block must measure the same in both runs.

Inode numbers must be equal, pids equal up to the few threads the library imports start
(a varying number under Docker and gVisor; a shared counter would move by ``FORKS``). Times can only be equal up to the machine's
scheduling noise: the start-to-start offset between waves and each later block's sandbox
age must agree within ``NOISE_S`` between the runs, while a collusion would move them by
``SLEEP_S``. (Not a speed assertion: both runs are held to the same fixed schedule.)
"""

from __future__ import annotations

import hashlib
import statistics
from pathlib import Path

import pytest

from yumen.catalog import DatasetRegistration
from yumen.connectors import demo_registration, generate_demo
from yumen.connectors._executor import run_blocks

K = 4
PARALLEL = 2
# generous: replacement sandboxes start while blocks run; under gVisor on a busy 2-core host a
# colluding block (forks, imports) has taken 9.4 s of a 10 s limit, so it gets more room there
BLOCK_TIMEOUT_S = {"bwrap": 10.0, "docker": 10.0, "gvisor": 30.0}
WAVE_SLACK_S = 0.5
SLEEP_S = 2.5
FORKS = 60
NOISE_S = 1.5  # start-up jitter of a sandbox on a busy 2-core machine (gVisor: ~1 s under load)

MEASURE_AND_COLLUDE = rb'''
import json, os, time
import polars as pl

started = time.time()
params = json.load(open("/data/params.json"))
out = {"started": started, "pid": os.getpid(), "rows": pl.read_parquet("/data/input/weather-daily.parquet").height}
out["input_mtime"] = os.stat("/data/input/weather-daily.parquet").st_mtime
for i, place in enumerate(("/tmp", "/dev/shm", "/data/output")):
    path = os.path.join(place, "probe")
    with open(path, "w") as f:
        out[f"ino_{i}"] = os.fstat(f.fileno()).st_ino
    os.unlink(path)
uptime = float(open("/proc/uptime").read().split()[0])
pid1_start = int(open("/proc/1/stat").read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
out["age"] = uptime - pid1_start
if params["collude"]:
    for _ in range(params["forks"]):  # move the pid counter
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    for place in ("/tmp", "/dev/shm"):  # move the inode counters
        for n in range(100):
            open(os.path.join(place, f"f{n}"), "w").close()
    time.sleep(params["sleep"])  # move every later start, if starts followed finishes
json.dump(out, open("/data/output/result.json", "w"))
'''


def _run(backend, data: Path, tmp_path: Path, *, collude: bool) -> list[dict[str, float]]:
    reg = DatasetRegistration.from_dict(demo_registration("weather-daily"))
    from yumen.sandbox import SandboxRequest
    from yumen.sandbox._pool import PoolShape

    # Start both runs alike: a full pool of this shape (wave 0 takes warm sandboxes).
    pool = backend.warm_up(SandboxRequest(algorithm=MEASURE_AND_COLLUDE, memory_mb=512))
    assert pool is not None and pool.shape == PoolShape.of(SandboxRequest(algorithm=MEASURE_AND_COLLUDE))
    assert pool.wait_full(120)
    block_dir = tmp_path / ("colluding" if collude else "quiet")
    block_dir.mkdir()
    outputs, statuses, _, _, _, reports = run_blocks(backend, MEASURE_AND_COLLUDE, reg, data, K, hashlib.sha256(b"channels").digest(),
                                       params={"collude": collude, "sleep": SLEEP_S, "forks": FORKS}, timeout_s=BLOCK_TIMEOUT_S[backend.name],
                                       memory_mb=512, parallel=PARALLEL, block_dir=block_dir, wave_slack_s=WAVE_SLACK_S)
    assert statuses == {"ok": K}, [(r.status.value, r.error, r.usage.wall_ms, r.stderr[-300:]) for r in reports]
    return outputs


@pytest.mark.slow
def test_no_counter_or_time_crosses_from_one_block_to_a_later_one(backend, no_trace, tmp_path):
    data = generate_demo("weather-daily", 4000, 1, tmp_path / "weather.parquet")
    quiet = _run(backend, data, tmp_path, collude=False)
    colluding = _run(backend, data, tmp_path, collude=True)
    for a, b in zip(quiet, colluding, strict=True):
        assert a["rows"] == b["rows"] > 0
        assert a["input_mtime"] == b["input_mtime"] == 0
        # a fresh tmpfs per block: the same inode numbers, whatever came before
        assert (a["ino_0"], a["ino_1"], a["ino_2"]) == (b["ino_0"], b["ino_1"], b["ino_2"])
        # a fresh pid namespace per block: the same pid up to the threads the imports start
        # (racy under Docker and gVisor: a few), where a shared counter would be FORKS further
        assert abs(a["pid"] - b["pid"]) < FORKS / 4, (a["pid"], b["pid"])

    def offset(run: list[dict[str, float]], wave: int) -> float:
        first = statistics.median(run[i]["started"] for i in range(PARALLEL))
        return statistics.median(run[i]["started"] for i in range(wave * PARALLEL, (wave + 1) * PARALLEL)) - first

    period = BLOCK_TIMEOUT_S[backend.name] + WAVE_SLACK_S
    for wave in range(1, K // PARALLEL):
        # the next wave starts at the same offset whether the earlier blocks slept or not
        assert abs(offset(quiet, wave) - offset(colluding, wave)) < NOISE_S, (offset(quiet, wave), offset(colluding, wave))
        assert abs(offset(quiet, wave) - wave * period) < NOISE_S
    no_trace(backend)
    for wave in range(1, K // PARALLEL):
        for i in range(wave * PARALLEL, (wave + 1) * PARALLEL):
            # how long its sandbox was up before it ran: set by the schedule, not by earlier blocks
            shift = abs(quiet[i]["age"] - colluding[i]["age"])
            if backend.name == "gvisor" and shift >= NOISE_S:
                # Known residual (docs/privacy.md): under gVisor a fork-heavy block slows the
                # start of the replacement sandboxes by seconds on a busy 2-core host.
                pytest.xfail(f"gVisor: a block's CPU use moved a later block's sandbox age by {shift:.1f} s")
            assert shift < NOISE_S, (wave, quiet[i]["age"], colluding[i]["age"])
