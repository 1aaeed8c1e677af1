"""Sample-and-aggregate blocks each run in a sandbox of their own; none may reach another's rows.

Every block's file holds a secret of its own. Each block runs the same hostile algorithm:
it hunts for any other block's secret (its own memory and the launcher's, environment,
command line and open files through /proc; every other process; the input directory;
every writable place; the environment; System V IPC) and then tries to leave its secret
for the blocks after it (files in every writable place, hidden names, a directory it makes
unreadable, extended attributes, a daemon that keeps writing and watches for the next
block's file, shared memory and message queues), and it tries to write to every file
descriptor of another process it can open. The result counts what it found; every count
must be zero on every backend. Each block takes a warm sandbox from the pool (the pool is
refilled before each block, so every block here runs on that path), as the connector's
blocks do; ``test_block_channels`` covers the connector's own scheduling.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from yumen.sandbox import SandboxRequest, Status
from yumen.sandbox._pool import PoolShape


def run_blocks(backend, request: SandboxRequest, paths: list[Path]) -> list:
    """Each block in a fresh warm sandbox of its own, taken from the pool (checked: none started cold)."""
    pool = backend.warm_up(request)
    reports = []
    for path in paths:
        assert pool.wait_full(120)
        before = pool.stats["taken"]
        reports.append(backend.run(dataclasses.replace(request, inputs={"d": path})))
        assert pool.stats["taken"] == before + 1, "the block did not take a warm sandbox"
    assert pool.shape == PoolShape.of(request)
    return reports

HUNT_AND_PLANT = rb'''
import ctypes, json, os, re, subprocess, time
import polars as pl

own = pl.read_parquet("/data/input/d.parquet")["secret"][0]
PATTERN = re.compile(rb"SECRET-[0-9]{4}-[a-z]{8}")
found = set()
leftovers = 0
forged = 0

def look(data):
    for m in PATTERN.findall(data or b""):
        if m.decode() != own:
            found.add(m.decode())

def read(path, limit=1 << 22):
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""

# 1. what earlier blocks may have left in every writable place (files, hidden files, dirs)
for place in ("/tmp", "/dev/shm", "/data/output", "/data/scratch"):
    for root, dirs, files in os.walk(place):
        leftovers += len(files) + len(dirs)
        for name in files:
            look(read(os.path.join(root, name)))
    try:
        for name in os.listxattr(place):
            leftovers += 1
            look(os.getxattr(place, name))
    except OSError:
        pass
    if os.stat(place).st_mtime > 0 and os.stat(place).st_mtime < time.time() - 3600 * 24 * 365 * 30:
        leftovers += 1
leftovers += len([n for n in os.listdir("/data/input") if n != "d.parquet"])
look(json.dumps(dict(os.environ)).encode())

# 2. every other process: environment, command line, open files, memory
for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
    for what in ("environ", "cmdline", "maps"):
        look(read(f"/proc/{pid}/{what}"))
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        fds = []
    for fd in fds:
        # read what another process reads or holds; forge the launcher's "ready" on what it writes
        try:
            f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
            try:
                look(os.read(f, 1 << 20))
            finally:
                os.close(f)
        except OSError:
            pass
        try:
            f = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(f, b'\n{"ready": true}\n')
                forged += 1
            finally:
                os.close(f)
        except OSError:
            pass
    try:
        with open(f"/proc/{pid}/mem", "rb") as mem:
            for line in open(f"/proc/{pid}/maps"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                try:
                    mem.seek(lo); look(mem.read(min(hi - lo, 1 << 24)))
                except (OSError, ValueError, OverflowError):
                    pass
    except OSError:
        pass
    if "sleeper-from-a-block" in read(f"/proc/{pid}/cmdline").decode(errors="replace"):
        leftovers += 1

# 3. this process's own memory, inherited from the launcher: any other block's rows in it?
with open("/proc/self/mem", "rb") as mem:
    for line in open("/proc/self/maps").read().splitlines():
        fields = line.split()
        if "rw" not in fields[1] or (len(fields) > 5 and fields[5].startswith("[v")):
            continue
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        try:
            mem.seek(lo); look(mem.read(min(hi - lo, 1 << 26)))
        except (OSError, ValueError, OverflowError):
            pass

# 4. System V IPC and POSIX message queues that outlive their processes
libc = ctypes.CDLL(None, use_errno=True)
ipc = 0
for key in range(0x5EC0, 0x5EC8):
    if libc.shmget(key, 4096, 0) >= 0 or libc.msgget(key, 0) >= 0:
        leftovers += 1
for text in (read("/proc/sysvipc/shm"), read("/proc/sysvipc/msg"), read("/proc/sysvipc/sem")):
    leftovers += max(0, len(text.splitlines()) - 1)

# 5. plant the secret for the next blocks, every way at hand
secret = own.encode()
for place in ("/tmp", "/dev/shm", "/data/output", "/data/scratch"):
    for name in ("planted", ".hidden"):
        try:
            open(os.path.join(place, name), "wb").write(secret)
        except OSError:
            pass
    try:
        os.makedirs(os.path.join(place, "deep/er"), exist_ok=True)
        open(os.path.join(place, "deep/er/file"), "wb").write(secret)
        os.chmod(os.path.join(place, "deep"), 0)
    except OSError:
        pass
    try:
        os.setxattr(place, "user.secret", secret)
    except OSError:
        pass
    try:
        os.utime(place, (1, 1))
    except OSError:
        pass
try:
    os.chmod("/tmp", 0o700)
except OSError:
    pass
key = 0x5EC0 + int(own[7:11]) % 8
shm = libc.shmget(key, 4096, 0o1666)
msg = libc.msgget(key, 0o1666)
ipc = int(shm >= 0 or msg >= 0)
mq = ctypes.CDLL(None, use_errno=True).syscall(240, b"/secret", 0o100 | 2, 0o666, None)  # mq_open on x86-64
ipc += int(mq >= 0)
subprocess.Popen(["/usr/bin/python3", "-c",
                  "import os, re, sys, time\n"
                  "sys.argv[0] = 'sleeper-from-a-block'\n"
                  "own = %r\n"
                  "while True:\n"
                  "    for p in ('/tmp/late', '/data/output/late', '/dev/shm/late'):\n"
                  "        try: open(p, 'w').write(own)\n"
                  "        except OSError: pass\n"
                  "    try: data = open('/data/input/d.parquet', 'rb').read()\n"
                  "    except OSError: data = b''\n"
                  "    if any(m.decode() != own for m in re.findall(rb'SECRET-[0-9]{4}-[a-z]{8}', data)):\n"
                  "        open('/data/output/result.json', 'w').write('{\"leak\": 1}')\n"
                  "    time.sleep(0.005)\n" % own, "sleeper-from-a-block"], start_new_session=True)
time.sleep(0.1)
json.dump({"foreign": len(found), "leftovers": leftovers, "ipc": ipc, "own": int(bool(own)), "forged": forged},
          open("/data/output/result.json", "w"))
'''


def _blocks(tmp_path: Path, count: int) -> list[Path]:
    import secrets
    import string

    paths = []
    for i in range(count):
        tag = "".join(secrets.choice(string.ascii_lowercase) for _ in range(8))
        path = tmp_path / f"block-{i}.parquet"
        pl.DataFrame({"secret": [f"SECRET-{i:04d}-{tag}"] * 50, "value": list(range(50))}).write_parquet(path)
        path.chmod(0o644)
        paths.append(path)
    return paths


def test_no_block_reads_another_blocks_rows_or_finds_what_it_left(backend, no_trace, tmp_path):
    paths = _blocks(tmp_path, 4)
    reports = run_blocks(backend, SandboxRequest(algorithm=HUNT_AND_PLANT, timeout_s=60), paths)
    assert [r.status for r in reports] == [Status.OK] * 4, [(r.status, r.error, r.stderr[-500:]) for r in reports]
    for report in reports:
        result = dict(report.result)
        forged, _ = result.pop("forged"), result.pop("ipc")  # IPC objects live in the block's own namespace
        assert result == {"foreign": 0.0, "leftovers": 0.0, "own": 1.0}
        if backend.name != "gvisor":  # gVisor lets it open its own launcher's pipes: it can only misreport itself
            assert forged == 0
    no_trace(backend)


def test_each_block_sees_only_its_own_rows(backend, no_trace, tmp_path):
    paths = _blocks(tmp_path, 5)
    count = b"""
import glob, json, polars as pl
files = glob.glob('/data/input/*')
df = pl.read_parquet(files[0])
json.dump({'files': len(files), 'block': int(df['secret'][0][7:11]), 'rows': df.height},
          open('/data/output/result.json', 'w'))
"""
    reports = run_blocks(backend, SandboxRequest(algorithm=count, timeout_s=60), paths)
    assert [r.result for r in reports] == [{"files": 1.0, "block": float(i), "rows": 50.0} for i in range(5)]
    no_trace(backend)


def test_a_hanging_block_times_out_alone(backend, no_trace, tmp_path):
    paths = _blocks(tmp_path, 3)
    hang = b"""
import json, polars as pl
if pl.read_parquet('/data/input/d.parquet')['secret'][0].startswith('SECRET-0001'):
    while True:
        pass
json.dump({'ok': 1}, open('/data/output/result.json', 'w'))
"""
    reports = run_blocks(backend, SandboxRequest(algorithm=hang, timeout_s=3), paths)
    assert [r.status for r in reports] == [Status.OK, Status.TIMEOUT, Status.OK]
    no_trace(backend)


def test_a_tree_a_block_leaves_is_not_in_the_next_blocks_sandbox(backend, no_trace, tmp_path):
    """A tree too deep to empty with the open-file limit: nothing to empty, the next sandbox is new."""
    paths = _blocks(tmp_path, 3)
    deep = b"""
import json, os, polars as pl
first = pl.read_parquet('/data/input/d.parquet')['secret'][0].startswith('SECRET-0000')
seen = len(os.listdir('/tmp'))
if first:
    os.chdir('/tmp')
    for _ in range(400):
        os.mkdir('d'); os.chdir('d')
    open('secret', 'w').write('x')
json.dump({'seen': seen}, open('/data/output/result.json', 'w'))
"""
    reports = run_blocks(backend, SandboxRequest(algorithm=deep, timeout_s=30, max_open_files=64), paths)
    assert [r.status for r in reports] == [Status.OK] * 3
    assert [r.result for r in reports] == [{"seen": 0.0}] * 3
    no_trace(backend)


@pytest.mark.parametrize("kind", ["memory", "crash"])
def test_a_failing_block_fails_alone(backend, no_trace, tmp_path, kind):
    paths = _blocks(tmp_path, 3)
    body = {
        "memory": "x = bytearray(1 << 30)\nx[::4096] = b'x' * len(x[::4096])",
        "crash": "import os; os.abort()",
    }[kind]
    source = f"""
import json, polars as pl
if pl.read_parquet('/data/input/d.parquet')['secret'][0].startswith('SECRET-0001'):
{chr(10).join('    ' + line for line in body.splitlines())}
json.dump({{'ok': 1}}, open('/data/output/result.json', 'w'))
""".encode()
    reports = run_blocks(backend, SandboxRequest(algorithm=source, timeout_s=30, memory_mb=256), paths)
    assert reports[0].status is Status.OK and reports[2].status is Status.OK
    assert reports[1].status in (Status.MEMORY, Status.KILLED, Status.ERROR) and reports[1].result is None
    no_trace(backend)
