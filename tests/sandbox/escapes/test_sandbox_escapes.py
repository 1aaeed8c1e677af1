"""Hostile algorithms, each run on every available backend.

Every test asserts two things: the attack failed (the algorithm's own attempt, the status,
and what the host can observe), and the host shows no trace of the job afterwards
(the ``no_trace`` fixture: no process, container, cgroup or staging directory left).

Attacks are bounded so the host stays healthy: small memory, process and time limits.
"""

from __future__ import annotations

import hashlib
import os
import resource
import secrets
import select
import socket
import subprocess
from pathlib import Path

import polars as pl
import pytest

from yumen.sandbox import SandboxRequest, Status

PRELUDE = '''
import ctypes, errno, json, os, signal, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def report(**kw):
    json.dump({k: float(v) for k, v in kw.items()}, open('/data/output/result.json', 'w'))
def works(fn, *a):
    try:
        r = fn(*a)
        return 0 if (isinstance(r, int) and not isinstance(r, bool) and r < 0) else 1
    except Exception:
        return 0
'''


def run(backend, body: str, **kw):
    kw.setdefault("timeout_s", 10)
    kw.setdefault("memory_mb", 256)
    return backend.run(SandboxRequest(algorithm=(PRELUDE + body).encode(), **kw))


def assert_contained(report, *, escaped_key: str = "escaped"):
    """The algorithm ran to the end and every attempt it counted failed."""
    assert report.status is Status.OK, (report.status, report.error, report.stderr[-500:])
    assert report.result[escaped_key] == 0, report.result


def everything(report) -> bytes:
    return report.stdout + report.stderr + repr(report.result).encode() + repr(report.to_json()).encode()


# --- network ------------------------------------------------------------------------


def test_tcp_connection_to_a_host_loopback_listener_fails(backend, no_trace):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        port = server.getsockname()[1]
        report = run(backend, f"""
def connect(host):
    s = socket.create_connection((host, {port}), timeout=1); s.sendall(b'leak')
report(escaped=sum(works(connect, h) for h in ('127.0.0.1', 'localhost', '::1', '10.0.2.2', '172.17.0.1')))
""")
        assert select.select([server], [], [], 0)[0] == []  # nobody knocked
    assert_contained(report)
    no_trace(backend)


def test_udp_datagram_to_a_host_loopback_socket_never_arrives(backend, no_trace):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        report = run(backend, f"""
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(20):
    try: s.sendto(b'leak', ('127.0.0.1', {port}))
    except OSError: pass
report(escaped=0)
""")
        assert select.select([server], [], [], 0.2)[0] == []
    assert report.status is Status.OK
    no_trace(backend)


def test_unix_socket_connections_to_host_listeners_fail(backend, no_trace, tmp_path):
    path = str(tmp_path / "host.sock")
    abstract = "\0yumen-test-" + secrets.token_hex(4)
    servers = []
    for address in (path, abstract):
        s = socket.socket(socket.AF_UNIX)
        s.bind(address)
        s.listen(4)
        s.setblocking(False)
        servers.append(s)
    os.chmod(tmp_path, 0o777)
    os.chmod(path, 0o777)
    try:
        report = run(backend, f"""
def connect(addr):
    s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect(addr); s.sendall(b'x')
report(escaped=works(connect, {path!r}) + works(connect, {abstract!r}))
""")
        assert all(select.select([s], [], [], 0)[0] == [] for s in servers)
    finally:
        for s in servers:
            s.close()
    assert_contained(report)
    no_trace(backend)


def test_docker_socket_is_unreachable(backend, no_trace):
    report = run(backend, """
def connect(p):
    s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect(p)
    s.sendall(b'GET /containers/json HTTP/1.0\\r\\n\\r\\n'); return len(s.recv(100))
report(escaped=sum(works(connect, p) for p in ('/var/run/docker.sock', '/run/docker.sock',
       '/run/containerd/containerd.sock')))
""")
    assert_contained(report)
    no_trace(backend)


def test_no_route_to_the_internet_or_dns(backend, no_trace):
    report = run(backend, """
def connect(addr):
    socket.create_connection(addr, timeout=1)
def resolve():
    socket.getaddrinfo('deb.debian.org', 80)
report(escaped=works(connect, ('1.1.1.1', 53)) + works(connect, ('151.101.2.132', 80)) + works(resolve))
""")
    assert_contained(report)
    interfaces = os.listdir("/sys/class/net")
    assert interfaces  # the host's own network is untouched
    no_trace(backend)


# --- reading host secrets -----------------------------------------------------------


def test_host_shadow_and_root_home_are_invisible(backend, no_trace):
    shadow = Path("/etc/shadow").read_bytes()
    root_entries = [e.encode() for e in os.listdir("/root") if len(e) > 4]
    report = run(backend, """
out = []
for p in ('/etc/shadow', '/etc/gshadow', '/root/.bashrc', '/root/.ssh/id_rsa', '/root/.pyenv/version'):
    try: out.append(open(p, 'rb').read().decode('latin1'))
    except OSError: pass
try: out.append(' '.join(os.listdir('/root')))
except OSError: pass
print('\\n'.join(out))
report(escaped=0)
""")
    assert report.status is Status.OK
    leaked = everything(report)
    for line in shadow.splitlines():
        if b":$" in line:  # a real password hash
            assert line not in leaked
    assert not any(entry in leaked for entry in root_entries), [e for e in root_entries if e in leaked]
    no_trace(backend)


def test_environment_and_proc_never_show_host_variables(backend, no_trace, monkeypatch):
    secret = "host-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("YUMEN_TEST_SECRET", secret)
    report = run(backend, """
print(dict(os.environ))
for pid in os.listdir('/proc'):
    if pid.isdigit():
        for name in ('environ', 'cmdline'):
            try: print(open(f'/proc/{pid}/{name}', 'rb').read())
            except OSError: pass
report(escaped=int(os.environ.get('HOME', '') == '/root'))
""")
    assert_contained(report)
    assert secret.encode() not in everything(report)
    assert b"/root/.pyenv" not in report.stdout
    no_trace(backend)


def test_connector_and_broker_private_keys_are_out_of_reach(backend, no_trace, tmp_path):
    token = secrets.token_hex(16)
    keys = {
        tmp_path / "etc" / "yumen" / "connector" / "connector.key": f"-----BEGIN PRIVATE KEY-----\nC{token}\n",
        tmp_path / "etc" / "yumen" / "broker" / "broker.key": f"-----BEGIN PRIVATE KEY-----\nB{token}\n",
        tmp_path / "var" / "lib" / "yumen" / "ca" / "ca.key": f"-----BEGIN PRIVATE KEY-----\nA{token}\n",
    }
    for path, content in keys.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(0o644)  # even world-readable keys must not be visible
    for d in (tmp_path, *[p.parent for p in keys]):
        d.chmod(0o755)
    targets = [str(p) for p in keys] + ["/etc/yumen/connector/connector.key", "/var/lib/yumen/ca/ca.key"]
    report = run(backend, f"""
found = 0
for p in {targets!r}:
    try: print(open(p).read()); found += 1
    except OSError: pass
for top in ('/etc', '/var', '/tmp', '/home', '/srv', '/opt'):
    for root, dirs, files in os.walk(top):
        for f in files:
            if f.endswith(('.key', '.pem')):
                try: print(open(os.path.join(root, f)).read()[:200])
                except OSError: pass
report(escaped=found)
""")
    assert_contained(report)
    assert token.encode() not in everything(report)
    no_trace(backend)


# --- writing to the host ------------------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_writes_outside_scratch_and_into_inputs_fail(backend, no_trace, tmp_path):
    data = tmp_path / "ds.parquet"
    pl.DataFrame({"v": [1, 2, 3]}).write_parquet(data)
    data.chmod(0o666)
    before = _sha(data)
    marker = tmp_path / "planted"
    tmp_path.chmod(0o777)
    report = run(backend, f"""
def write(p):
    with open(p, 'wb') as f: f.write(b'x')
targets = ['/planted', '/usr/planted', '/etc/planted', '/data/planted', '/data/params.json',
           '/data/algorithm.py', '/data/input/ds.parquet', '/data/input/new.parquet', {str(marker)!r},
           '/proc/sys/kernel/hostname', '/sys/kernel/planted']
n = sum(works(write, p) for p in targets)
n += works(os.truncate, '/data/input/ds.parquet', 0)
n += works(os.chmod, '/data/input/ds.parquet', 0o777)
n += works(os.unlink, '/data/input/ds.parquet')
n += works(os.rename, '/data/input/ds.parquet', '/tmp/moved')
ok = sum(works(write, p) for p in ('/tmp/ok', '/data/scratch/ok', '/data/output/ok'))
report(escaped=n, scratch_ok=ok)
""", inputs={"ds": data})
    assert_contained(report)
    assert report.result["scratch_ok"] == 3
    assert _sha(data) == before and not marker.exists()
    assert not Path("/planted").exists() and not Path("/usr/planted").exists()
    no_trace(backend)


def test_result_symlink_to_a_host_path_is_rejected_and_the_host_file_untouched(backend, no_trace, tmp_path):
    target = tmp_path / "host-file"
    target.write_text("host content")
    tmp_path.chmod(0o777)
    report = run(backend, f"""
os.symlink({str(target)!r}, '/data/output/result.json')
""")
    assert report.status is Status.INVALID_OUTPUT
    assert target.read_text() == "host content"
    assert b"host content" not in everything(report)
    no_trace(backend)


def test_result_symlink_to_a_sandbox_secret_is_rejected(backend, no_trace):
    report = run(backend, "os.symlink('/etc/passwd', '/data/output/result.json')")
    assert report.status is Status.INVALID_OUTPUT
    assert b"root:" not in everything(report)
    no_trace(backend)


def test_result_hardlink_tricks_are_rejected(backend, no_trace):
    report = run(backend, """
cross = works(os.link, '/etc/passwd', '/data/output/result.json')
open('/data/output/real.json', 'w').write('{"a": 1}')
os.link('/data/output/real.json', '/data/output/result.json') if not cross else None
""")
    assert report.status is Status.INVALID_OUTPUT and "hard link" in report.error
    no_trace(backend)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_result_that_is_not_a_regular_file_is_rejected_without_hanging(backend, no_trace, kind):
    make = "os.mkfifo('/data/output/result.json')" if kind == "fifo" else "os.mkdir('/data/output/result.json')"
    report = run(backend, make, timeout_s=10)
    assert report.status is Status.INVALID_OUTPUT
    assert report.usage.wall_ms < 9000
    no_trace(backend)


# --- kernel attack surface ----------------------------------------------------------


def test_ptrace_mount_unshare_setns_and_chroot_fail(backend, no_trace):
    report = run(backend, """
n = 0
n += works(lambda: libc.ptrace(16, 1, 0, 0))           # PTRACE_ATTACH to the first process
n += works(lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))
n += works(lambda: libc.umount2(b'/proc', 2))
n += works(lambda: libc.unshare(0x10000000))            # CLONE_NEWUSER
n += works(lambda: libc.unshare(0x00020000))            # CLONE_NEWNS
n += works(lambda: libc.setns(os.open('/proc/1/ns/mnt', os.O_RDONLY), 0))
n += works(lambda: libc.chroot(b'/tmp'))
n += works(lambda: libc.pivot_root(b'/tmp', b'/tmp'))
report(escaped=n)
""")
    if backend.name == "gvisor":
        # gVisor implements namespaces and chroot inside its own user-space kernel: a new
        # user namespace there may succeed (and then cannot write the result) but never
        # reaches the host kernel. What must hold is that the job ended and left nothing.
        assert report.status in (Status.OK, Status.ERROR)
    else:
        assert_contained(report)
    no_trace(backend)


def test_ptrace_of_a_host_process_is_impossible(backend, no_trace):
    canary = subprocess.Popen(["sleep", "60"])
    try:
        report = run(backend, f"""
report(escaped=works(lambda: libc.ptrace(16, {canary.pid}, 0, 0)) + works(os.kill, {canary.pid}, 0))
""")
        status = Path(f"/proc/{canary.pid}/status").read_text()
        assert "TracerPid:\t0" in status and canary.poll() is None
    finally:
        canary.kill()
        canary.wait()
    assert_contained(report)
    no_trace(backend)


def test_setuid_and_capabilities_are_unavailable(backend, no_trace):
    report = run(backend, """
n = works(os.setuid, 0) + works(os.setgid, 0) + works(os.seteuid, 0)
caps = [l for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm', 'CapBnd'))]
n += sum(1 for l in caps if int(l.split()[1], 16) != 0)
nnp = libc.prctl(39, 0, 0, 0, 0)                 # PR_GET_NO_NEW_PRIVS
report(escaped=n, uid=os.getuid(), no_new_privs=nnp)
""")
    assert_contained(report)
    assert report.result["uid"] != 0 and report.result["no_new_privs"] == 1
    no_trace(backend)


def test_module_loading_kexec_keyrings_and_bpf_fail(backend, no_trace):
    report = run(backend, """
sc = libc.syscall
n = 0
n += works(lambda: sc(175, b'', 0, b''))          # init_module
n += works(lambda: sc(313, 0, b'', 0))            # finit_module
n += works(lambda: sc(176, b'ext4', 0))           # delete_module
n += works(lambda: sc(246, 0, 0, 0, 0))           # kexec_load
n += works(lambda: sc(248, b'user', b'k', b'v', 1, -3))  # add_key
n += works(lambda: sc(250, 0, 0, 0, 0, 0))        # keyctl
n += works(lambda: sc(321, 0, 0, 0))              # bpf
n += works(lambda: sc(298, 0, 0, -1, -1, 0))      # perf_event_open
n += works(lambda: sc(323, 0))                    # userfaultfd
n += works(lambda: sc(169, 0xfee1dead, 672274793, 0x4321fedc, 0))  # reboot
n += works(lambda: sc(167, b'/tmp/swap', 0))      # swapon
report(escaped=n)
""")
    assert_contained(report)
    no_trace(backend)


def test_raw_devices_are_absent_or_unreadable(backend, no_trace):
    report = run(backend, """
def read(p):
    with open(p, 'rb') as f: return len(f.read(16))
devs = ['/dev/mem', '/dev/kmem', '/dev/port', '/dev/sda', '/dev/vda', '/dev/nvme0n1', '/dev/kmsg', '/dev/dm-0']
def mknod_and_read():
    os.mknod('/tmp/sda', 0o600 | 0o060000, os.makedev(8, 0))
    return read('/tmp/sda')
report(escaped=sum(works(read, d) for d in devs) + works(mknod_and_read))
""")
    assert_contained(report)
    no_trace(backend)


def test_host_canary_process_cannot_be_killed(backend, no_trace):
    canary = subprocess.Popen(["sleep", "60"])
    try:
        report = run(backend, f"""
n = works(os.kill, {canary.pid}, signal.SIGKILL)
try: os.kill(-1, signal.SIGKILL)                 # everything this user may signal (itself included)
except OSError: pass
report(escaped=n)
""")
        assert canary.poll() is None
    finally:
        canary.kill()
        canary.wait()
    # kill(-1) takes the algorithm down with it; the canary surviving is what matters.
    assert report.status in (Status.OK, Status.KILLED)
    assert report.result is None or report.result["escaped"] == 0
    no_trace(backend)


def test_hostname_and_kernel_settings_stay_unchanged(backend, no_trace):
    host = socket.gethostname()
    report = run(backend, """
n = works(lambda: libc.sethostname(b'pwned', 5)) + works(socket.sethostname, 'pwned')
report(escaped=n)
""")
    assert socket.gethostname() == host
    assert report.status is Status.OK and (backend.name != "bwrap" or report.result["escaped"] == 0)
    no_trace(backend)


def test_io_uring_is_refused(backend, no_trace):
    report = run(backend, """
params = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 8, params)
report(escaped=int(fd >= 0))
""")
    if backend.name == "bwrap":
        assert_contained(report)
    else:
        assert report.status is Status.OK
    no_trace(backend)


# --- resource exhaustion ------------------------------------------------------------


def test_fork_bomb_is_contained_and_leaves_no_process(backend, no_trace):
    report = run(backend, """
import time
pids = 0
end = time.time() + 3
while time.time() < end:
    try:
        if os.fork() == 0:
            time.sleep(30); os._exit(0)
        pids += 1
    except OSError:
        time.sleep(0.01)
report(forked=pids)
""", timeout_s=8, max_processes=32)
    assert report.status in (Status.OK, Status.TIMEOUT, Status.ERROR)
    if report.result is not None:
        assert report.result["forked"] < 32
    no_trace(backend)


def test_memory_bomb_ends_with_memory_status(backend, no_trace):
    report = run(backend, "chunks = []\nwhile True: chunks.append(bytearray(16 * 1024 * 1024))", memory_mb=128)
    assert report.status is Status.MEMORY, (report.status, report.error, report.stderr[-300:])
    no_trace(backend)


def test_filling_the_disk_stops_at_the_scratch_cap(backend, no_trace):
    before = os.statvfs("/")
    report = run(backend, """
written = 0
for d in ('/tmp', '/data/scratch', '/dev/shm', '/data', '/'):
    try:
        with open(os.path.join(d, 'fill'), 'wb') as f:
            block = b'x' * (1 << 20)
            for i in range(4096):
                f.write(block); f.flush(); written += 1
    except OSError:
        pass
report(written_mb=written)
""", scratch_mb=16, memory_mb=256, timeout_s=20)
    after = os.statvfs("/")
    assert report.status in (Status.OK, Status.ERROR, Status.MEMORY)
    if report.result is not None:
        assert report.result["written_mb"] < 16 * 3 + 4
    assert (before.f_bavail - after.f_bavail) * before.f_frsize < 256 << 20
    no_trace(backend)


def test_infinite_loop_times_out(backend, no_trace):
    report = run(backend, "while True: pass", timeout_s=1.5)
    assert report.status is Status.TIMEOUT and report.usage.wall_ms < 8000
    no_trace(backend)


def test_ignoring_sigterm_does_not_survive_the_timeout(backend, no_trace):
    report = run(backend, """
import time
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
    signal.signal(s, signal.SIG_IGN)
while True: time.sleep(0.1)
""", timeout_s=1.5)
    assert report.status is Status.TIMEOUT
    no_trace(backend)


def test_double_forked_daemon_does_not_outlive_the_job(backend, no_trace, tmp_path):
    tmp_path.chmod(0o777)
    marker = tmp_path / "daemon-was-here"
    report = run(backend, f"""
import time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for s in (signal.SIGTERM, signal.SIGHUP): signal.signal(s, signal.SIG_IGN)
        os.closerange(0, 1024)
        time.sleep(2)
        try: open({str(marker)!r}, 'w').write('x')
        except OSError: pass
        open('/tmp/daemon', 'w').write('x')
        time.sleep(600)
    os._exit(0)
os.wait()
report(escaped=0)
""")
    assert report.status is Status.OK
    assert report.usage.wall_ms < 5000
    no_trace(backend)
    import time

    time.sleep(2.5)
    assert not marker.exists()
    no_trace(backend)


def test_one_gibibyte_on_stdout_is_drained_and_capped(backend, no_trace):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = run(backend, """
block = b'y' * (1 << 20)
for i in range(1024):
    sys.stdout.buffer.write(block)
sys.stdout.flush()
report(escaped=0)
""", timeout_s=30)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert report.status is Status.OK
    assert len(report.stdout) == 64 * 1024 and report.usage.stdout_bytes == 1 << 30
    assert after - before < 64 * 1024  # KiB: the host kept the cap, not the stream
    no_trace(backend)


# --- hostile results ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "status"),
    [
        ('{"a": ' + "1" * 100_000 + "}", Status.OUTPUT_TOO_LARGE),
        ("this is not json", Status.INVALID_OUTPUT),
        ('{"a": NaN, "b": Infinity}', Status.INVALID_OUTPUT),
        ("[" * 30_000 + "]" * 30_000, Status.INVALID_OUTPUT),
        ('{"a": {"b": {"c": 1}}}', Status.INVALID_OUTPUT),
        ('{"rows": ["alice", "bob"]}', Status.INVALID_OUTPUT),
    ],
    ids=["huge", "non-json", "nan", "deeply-nested", "nested-object", "strings"],
)
def test_hostile_results_are_rejected(backend, no_trace, content, status):
    report = run(backend, f"open('/data/output/result.json', 'w').write({content!r})")
    assert report.status is status and report.result is None
    assert "alice" not in str(report.to_json())
    no_trace(backend)


def test_result_written_by_a_leftover_process_after_exit_is_not_trusted(backend, no_trace):
    report = run(backend, """
import time
if os.fork() == 0:
    time.sleep(0.5)
    open('/data/output/result.json', 'w').write('{"late": 1}')
    os._exit(0)
report(early=1)
""")
    assert report.status is Status.OK and report.result == {"early": 1.0}
    no_trace(backend)
