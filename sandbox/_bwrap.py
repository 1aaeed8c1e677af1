"""The default backend: bubblewrap namespaces around the shared runtime, on the local host.

Layers, from the outside in:

* a fresh host user id per job (when Yumen runs as root): the sandbox is never root on the
  host, even if every namespace were escaped, and RLIMIT_NPROC counts only this job
  (root is exempt from RLIMIT_NPROC, so without this the process limit would not hold);
* a per-job memory and pids cgroup when the host lets us create one (see ``_cgroup``);
* bubblewrap: new user, pid, network (loopback only), IPC, UTS and cgroup namespaces, no
  capabilities, no_new_privs, no nested user namespaces (``--disable-userns``), a new
  session (no terminal injection), death with its parent;
* the runtime rootfs mounted read-only as ``/``: no host file is visible at all; ``/data``
  is a read-only tmpfs holding the algorithm and the parameters (copied in from memory
  file descriptors) and the inputs (bound read-only; see ``_stage_inputs``); ``/tmp`` (= ``/data/scratch``), ``/dev/shm`` and
  ``/data/output`` are size-capped tmpfs that vanish with the job;
* the seccomp filter from ``_seccomp``;
* rlimits set by the launcher before any buyer code runs (CPU, file size, open files,
  processes, core dumps; address space only when no memory cgroup is available).

The wall-clock deadline is enforced here: at the deadline the whole process group of the
outer bubblewrap is SIGKILLed; the sandbox's pid 1 dies with its parent, and the kernel
kills every process left in the pid namespace, daemons included.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from yumen.errors import Code, YumenError

from ._cgroup import JobCgroup, cgroup_support
from ._outcome import HostFacts, classify, parse_bundle
from ._runtime import Runtime, load_runtime
from ._pool import PooledRuns, PoolShape, WarmContainer, WarmPool, pool_for
from ._seccomp import seccomp_memfd
from ._types import SandboxReport, SandboxRequest

__all__ = ["BwrapBackend", "launcher_source", "sandbox_env"]

log = logging.getLogger(__name__)

_LAUNCHER_PATH = Path(__file__).with_name("_launcher.py")
_BWRAP_STDERR_CAP = 16 * 1024
_WARM_START_S = 120.0  # how long a warm sandbox may take to start and import its libraries
_SANDBOX_UID = 65534  # "nobody" inside the sandbox's user namespace
_NAMESPACES = (
    "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net",
    "--unshare-uts", "--unshare-cgroup", "--disable-userns",
    # The launcher is the namespace's pid 1 (no bwrap reaper): the outer bwrap then
    # reaps it itself instead of leaving a zombie for the host's init, and when
    # it exits the kernel kills whatever else is left in the namespace.
    "--as-pid-1", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    "--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID), "--hostname", "sandbox",
)


@functools.cache
def launcher_source() -> str:
    """The in-sandbox launcher's source, read once per process."""
    return _LAUNCHER_PATH.read_text()


def sandbox_env(request: SandboxRequest) -> dict[str, str]:
    """The complete environment of buyer code: nothing is inherited from the host."""
    threads = str(max(1, math.ceil(request.cpus)))
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # Thread pools sized to the CPU share, so they fit under the process limit.
        "POLARS_MAX_THREADS": threads,
        "RAYON_NUM_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "ARROW_IO_THREADS": threads,
        "MALLOC_ARENA_MAX": "2",
    }


def launcher_config(request: SandboxRequest, *, as_bytes: int | None, protect: bool = False) -> dict:
    """Limits the launcher applies before the algorithm runs; ``protect`` makes it non-dumpable."""
    return {
        "protect": protect,
        "log_limit": request.log_limit_bytes,
        "output_limit": request.output_limit_bytes,
        "nofile": request.max_open_files,
        "fsize": request.scratch_mb << 20,
        "nproc": request.max_processes,
        "cpu_s": request.cpu_limit_s,
        "as_bytes": as_bytes,
    }


def bundle_cap(request: SandboxRequest) -> int:
    """The most launcher output the host will hold: base64 of both logs and the result, plus framing."""
    return 2 * (2 * request.log_limit_bytes + request.output_limit_bytes) + 64 * 1024


class _Pump:
    """Drain pipes into capped buffers until EOF or a deadline, without threads."""

    def __init__(self, caps: dict[int, int]) -> None:
        self.buffers = {fd: bytearray() for fd in caps}
        self.caps = caps
        self.selector = selectors.DefaultSelector()
        for fd in caps:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ)
        self.open = set(caps)

    def run(self, deadline: float) -> bool:
        """Return True when every pipe reached EOF, False at the deadline."""
        while self.open:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in self.selector.select(remaining):
                fd = key.fd
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    self.selector.unregister(fd)
                    self.open.discard(fd)
                    continue
                room = self.caps[fd] - len(self.buffers[fd])
                if room > 0:
                    self.buffers[fd] += chunk[:room]
        return True

    def close(self) -> None:
        self.selector.close()


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class BwrapBackend(PooledRuns):
    """Runs buyer code under bubblewrap on this host (see the module docstring)."""

    name = "bwrap"

    def __init__(
        self,
        *,
        runtime_dir: Path | str | None = None,
        bwrap: str = "bwrap",
        uid_base: int = 2_000_000_000,
        uid_count: int = 1_000_000,
        use_cgroups: bool = True,
        staging_dir: Path | str | None = None,
        pool_size: int = 0,
        pool_dir: Path | str | None = None,
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or not 0 <= pool_size <= 64:
            raise YumenError(Code.INVALID_ARGUMENT, f"pool_size must be an integer from 0 to 64, got {pool_size!r}",
                             hint="0 turns warm sandboxes off")
        self.pool_size = pool_size
        self._init_pooled_runs()
        self._pool_dir = str(pool_dir) if pool_dir else None
        self._runtime_dir = Path(runtime_dir) if runtime_dir else None
        self._bwrap = bwrap
        self._uid_base = uid_base
        self._uid_count = uid_count
        self._use_cgroups = use_cgroups
        self._staging_dir = staging_dir
        self._runtime: Runtime | None = None
        self._bwrap_path: str | None = None

    # -- set-up ---------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = load_runtime(self._runtime_dir)
        return self._runtime

    def _bwrap_bin(self) -> str:
        if self._bwrap_path is None:
            path = shutil.which(self._bwrap)
            if path is None:
                raise YumenError(
                    Code.SANDBOX_UNAVAILABLE,
                    "bubblewrap (bwrap) is not installed",
                    hint="install it: apt-get install -y bubblewrap (version 0.8 or later)",
                )
            self._bwrap_path = path
        return self._bwrap_path

    def check(self) -> None:
        """Verify bwrap, user namespaces, the runtime and seccomp with one trivial run."""
        self._bwrap_bin()
        try:
            max_ns = int(Path("/proc/sys/user/max_user_namespaces").read_text())
        except (OSError, ValueError):
            max_ns = 1
        if max_ns == 0:
            raise YumenError(
                Code.SANDBOX_UNAVAILABLE,
                "user namespaces are disabled on this host",
                hint="sysctl -w user.max_user_namespaces=15000",
            )
        runtime = self.runtime
        report = self.run(SandboxRequest(algorithm=b"open('/data/output/result.json','w').write('{\"ok\": 1}')", timeout_s=30))
        if not report.ok:
            raise YumenError(
                Code.SANDBOX_UNAVAILABLE,
                f"bubblewrap could not run a trivial algorithm ({report.status.value}: {report.error})",
                hint=f"check kernel support for unprivileged user namespaces and the runtime at {runtime.directory}",
            )

    @property
    def uses_cgroups(self) -> bool:
        return self._use_cgroups and cgroup_support() is not None

    # -- one execution ----------------------------------------------------------------

    def _job_uid(self) -> int | None:
        if os.geteuid() != 0:
            return None
        return self._uid_base + secrets.randbelow(self._uid_count)

    def _stage_inputs(self, request: SandboxRequest, staging: list[str]) -> list[tuple[str, str]]:
        """Make every input reachable by the job's user without widening the host's permissions.

        bubblewrap binds paths as the job's (unprivileged) user, so an input must be
        readable and its directories traversable by "others". Inputs that are not are
        hard-linked (world-readable file in a private directory) or copied (private file)
        into a per-job staging directory that is removed afterwards.
        """
        binds: list[tuple[str, str]] = []
        for dataset, path in sorted(request.inputs.items()):
            source = Path(path).resolve()
            try:
                st = source.stat()
            except OSError as e:
                raise YumenError(
                    Code.INVALID_ARGUMENT,
                    f"input {dataset!r} cannot be opened: {e.strerror}",
                    hint="pass an existing parquet file",
                ) from None
            if not source.is_file():
                raise YumenError(Code.INVALID_ARGUMENT, f"input {dataset!r} is not a regular file")
            dest = f"/data/input/{dataset}.parquet"
            readable = bool(st.st_mode & 0o004)
            # staged privately for this job's own uid (its connector pinned the uid: see
            # connectors/_destruction.JobScratch): bound as it is
            private = self._uid_count == 1 and st.st_uid == self._uid_base and bool(st.st_mode & 0o400) \
                and _traversable(source.parent, owner=self._uid_base)
            if os.geteuid() != 0 or private or (readable and _traversable(source.parent)):
                binds.append((str(source), dest))
                continue
            if not staging:
                staging.append(tempfile.mkdtemp(prefix="yumen-stage-", dir=self._staging_dir))
                os.chmod(staging[0], 0o711)
                if not _traversable(Path(staging[0]).parent):
                    raise YumenError(
                        Code.CONFIG,
                        f"the sandbox staging directory {Path(staging[0]).parent} is not traversable by other users",
                        hint="choose a staging_dir whose every parent has o+x (e.g. chmod 711)",
                    )
            staged = os.path.join(staging[0], f"{len(binds)}-{secrets.token_hex(4)}.parquet")
            try:
                if not readable:
                    raise OSError("private file: copy")
                os.link(source, staged)
            except OSError:
                shutil.copyfile(source, staged)
                os.chmod(staged, 0o444)
            binds.append((staged, dest))
        return binds

    def _argv(self, request: SandboxRequest, *, seccomp_fd: int, algo_fd: int, params_fd: int,
              binds: list[tuple[int, str]], as_bytes: int | None) -> list[str]:
        runtime = self.runtime
        scratch = str(request.scratch_mb << 20)
        output = str(max(request.output_limit_bytes * 2, 1 << 20))
        argv = [
            self._bwrap_bin(), *_NAMESPACES,
            "--ro-bind", str(runtime.rootfs), "/",
            "--proc", "/proc", "--dev", "/dev",
            "--size", scratch, "--tmpfs", "/dev/shm",
            "--size", scratch, "--perms", "1777", "--tmpfs", "/tmp",
            "--size", str(1 << 20), "--tmpfs", "/data",
            "--ro-bind-data", str(algo_fd), "/data/algorithm.py",
            "--ro-bind-data", str(params_fd), "/data/params.json",
        ]
        argv += ["--dir", "/data/input"]
        for source, dest in binds:
            argv += ["--ro-bind", source, dest]
        argv += [
            "--size", output, "--perms", "0777", "--tmpfs", "/data/output",
            "--symlink", "/tmp", "/data/scratch",
            "--remount-ro", "/data",
            "--chdir", "/tmp", "--clearenv",
        ]
        for key, value in sandbox_env(request).items():
            argv += ["--setenv", key, value]
        argv += ["--seccomp", str(seccomp_fd), "--", "/usr/bin/python3", "-I", "-c", launcher_source()]
        argv.append(json.dumps(launcher_config(request, as_bytes=as_bytes)))
        return argv

    @staticmethod
    def _wrap(argv: list[str], uid: int | None, cgroup: JobCgroup | None) -> list[str]:
        """The exec chain that puts bwrap under the job's host uid and into its cgroups."""
        if uid is not None:
            # The switch to the job's uid happens in the exec chain (setpriv), not in
            # Popen: asking Popen for user/group makes CPython fork() instead of vfork(),
            # and forking a connector that holds gigabytes of data frames costs ~100 ms.
            argv = [_SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]
        if cgroup is not None:
            # The first process joins the job's groups itself, before bwrap forks anything.
            join = 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@"'
            argv = ["/bin/sh", "-c", join, "sh", *cgroup.procs_files, "--", *argv]
        return argv

    def run(self, request: SandboxRequest) -> SandboxReport:
        """Run one job: in a warm sandbox when the pool has one of its shape, else in a cold one."""
        return self.run_pooled(request)

    def _run_cold(self, request: SandboxRequest) -> SandboxReport:
        runtime = self.runtime
        job_id = secrets.token_hex(6)
        uid = self._job_uid()
        fds: list[int] = []
        staging: list[str] = []
        cgroup: JobCgroup | None = None
        proc: subprocess.Popen | None = None
        try:
            binds = self._stage_inputs(request, staging)
            seccomp_fd = seccomp_memfd()
            fds.append(seccomp_fd)
            algo_fd = _memfd("algorithm", bytes(request.algorithm))
            fds.append(algo_fd)
            params_fd = _memfd("params", request.params_json)
            fds.append(params_fd)
            layout = cgroup_support() if self._use_cgroups and uid is not None else None
            as_bytes = None
            if layout is not None:
                cgroup = JobCgroup(
                    layout, job_id, memory_bytes=request.memory_mb << 20,
                    max_pids=request.max_processes, owner_uid=uid,
                )
            else:
                # Address-space cap as the fallback; allocators reserve ~1 GiB they never touch.
                as_bytes = (request.memory_mb + 1024) << 20
            argv = self._argv(request, seccomp_fd=seccomp_fd, algo_fd=algo_fd, params_fd=params_fd,
                              binds=binds, as_bytes=as_bytes)
            argv = self._wrap(argv, uid, cgroup)
            started = time.monotonic()
            deadline = started + request.timeout_s
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=fds,
                env={"PATH": "/usr/bin:/bin"},
                start_new_session=True,
            )
            pump = _Pump({proc.stdout.fileno(): bundle_cap(request), proc.stderr.fileno(): _BWRAP_STDERR_CAP})
            try:
                finished = pump.run(deadline)
            finally:
                pump.close()
            timed_out = not finished
            if timed_out:
                self._kill(proc, cgroup, uid)
            else:
                # Pipes closed: the launcher is done; bwrap exits right after.
                if not self._wait_exit(proc, deadline + 2.0):
                    timed_out = True
                    self._kill(proc, cgroup, uid)
            _, wait_status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(wait_status)
            wall_ms = int((time.monotonic() - started) * 1000)
            stdout = bytes(pump.buffers[proc.stdout.fileno()])
            runner_stderr = bytes(pump.buffers[proc.stderr.fileno()])
            bundle = parse_bundle(stdout)
            if bundle is None and not timed_out and proc.returncode in (1, 125):
                if runner_stderr.startswith(b"bwrap:") or proc.returncode == 125:
                    log.warning("sandbox %s failed to start: %r", job_id, runner_stderr[:2000])
                    raise YumenError(
                        Code.SANDBOX,
                        "the bubblewrap sandbox could not be created",
                        hint="see the connector's log; `yumen sandbox check` tests the set-up",
                    )
            oom = cgroup.oom_killed() if cgroup is not None else False
            facts = HostFacts(
                backend=self.name,
                runtime_digest=runtime.digest,
                wall_ms=wall_ms,
                timed_out=timed_out,
                oom_killed=oom,
                cpu_ms=int((rusage.ru_utime + rusage.ru_stime) * 1000),
                # The job's memory cgroup peak when there is one. wait4's ru_maxrss is not used:
                # the first process of the exec chain starts as a vfork child and reports the
                # connector's own resident size.
                max_rss_kb=cgroup.peak_kb() if cgroup is not None else None,
                runner_stderr=runner_stderr,
            )
            report = classify(request, facts, bundle)
            log.info("sandbox %s (%s) finished: %s in %d ms", job_id, self.name, report.status.value, wall_ms)
            return report
        finally:
            if proc is not None:
                if proc.returncode is None:
                    self._kill(proc, cgroup, uid)
                    try:
                        os.waitpid(proc.pid, 0)
                    except ChildProcessError:
                        pass
                    proc.returncode = -9
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
            if cgroup is not None:
                cgroup.remove()
            for fd in fds:
                os.close(fd)
            for path in staging:
                shutil.rmtree(path, ignore_errors=True)

    # -- warm sandboxes ----------------------------------------------------------------

    def pool(self, shape: PoolShape) -> WarmPool | None:
        """The process-wide pool of warm bubblewrap sandboxes of ``shape`` (None when pooling is off)."""
        if self.pool_size <= 0:
            return None
        key = ("bwrap", str(self.runtime.rootfs), self.uses_cgroups, os.geteuid() == 0)
        return pool_for(key, shape, size=self.pool_size, root=self._pool_dir or _pool_root(), create=self._create_warm,
                        remove=_destroy, name=self.name)

    def warm_up(self, request: SandboxRequest | None = None) -> WarmPool | None:
        """Start filling the pool for ``request``'s shape (the default request's when None)."""
        return self.pool(PoolShape.of(request or SandboxRequest(algorithm=b"")))

    def _create_warm(self, shape: PoolShape, directory: str) -> tuple[_Warm, None]:
        """Start one sandbox for ``directory``: the launcher imports, then waits on stdin for its job.

        It gets everything a cold one gets (its own host uid, cgroup, namespaces, filter,
        tmpfs), allocated now; its ``/data`` is ``directory``, bound read-only, still empty.
        """
        uid = self._job_uid()
        layout = cgroup_support() if self._use_cgroups and uid is not None else None
        job_id = secrets.token_hex(6)
        cgroup = None
        seccomp_fd = -1
        try:
            if uid is not None and not _traversable(Path(directory)):
                raise YumenError(Code.CONFIG, f"the sandbox pool directory {directory} is not traversable by other users",
                                 hint="choose a pool_dir whose every parent has o+x (e.g. chmod 711)")
            os.rmdir(os.path.join(directory, "scratch"))  # a tmpfs below, like /tmp; never the host's disk
            os.mkdir(os.path.join(directory, "scratch"), 0o755)
            if layout is not None:
                cgroup = JobCgroup(layout, job_id, memory_bytes=shape.memory_mb << 20, max_pids=shape.max_processes,
                                   owner_uid=uid)
            as_bytes = None if cgroup is not None else (shape.memory_mb + 1024) << 20
            seccomp_fd = seccomp_memfd()
            scratch = str(shape.scratch_mb << 20)
            argv = [
                self._bwrap_bin(), *_NAMESPACES,
                "--ro-bind", str(self.runtime.rootfs), "/",
                "--proc", "/proc", "--dev", "/dev",
                "--size", scratch, "--tmpfs", "/dev/shm",
                "--size", scratch, "--perms", "1777", "--tmpfs", "/tmp",
                "--ro-bind", directory, "/data",
                "--size", str(max(shape.output_limit_bytes * 2, 1 << 20)), "--perms", "0777", "--tmpfs", "/data/output",
                "--size", scratch, "--perms", "1777", "--tmpfs", "/data/scratch",
                "--chdir", "/tmp", "--clearenv",
            ]
            for key, value in sandbox_env(shape).items():
                argv += ["--setenv", key, value]
            config = {"from_stdin": True, "protect": True, "preload": list(shape.preload)}
            argv += ["--seccomp", str(seccomp_fd), "--", "/usr/bin/python3", "-I", "-c", launcher_source(),
                     json.dumps(config)]
            argv = self._wrap(argv, uid, cgroup)
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=[seccomp_fd], env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        finally:
            if seccomp_fd >= 0:
                os.close(seccomp_fd)
        warm = _Warm(id=job_id, proc=proc, cgroup=cgroup, uid=uid, as_bytes=as_bytes)
        # Ready only once its libraries are imported: a job that takes it must not wait for them.
        if not _read_waiting(proc, time.monotonic() + _WARM_START_S):
            _destroy(warm)
            raise YumenError(Code.SANDBOX, f"a warm bubblewrap sandbox did not start (exit {proc.returncode})")
        return warm, None

    def _run_warm(self, request: SandboxRequest, warm: WarmContainer, pool: WarmPool | None) -> SandboxReport | None:
        """Run on a warm sandbox; None when it turned out unusable before the job was sent."""
        sandbox: _Warm = warm.container
        proc = sandbox.proc
        self._track(warm, lambda: self._kill(proc, sandbox.cgroup, sandbox.uid))
        try:
            if proc.poll() is not None:
                log.warning("warm sandbox %s had ended (exit %s); starting a cold one", sandbox.id, proc.returncode)
                return None
            _fill_directory(request, warm.directory)
            config = launcher_config(request, as_bytes=sandbox.as_bytes, protect=True)
            started = time.monotonic()
            try:
                os.write(proc.stdin.fileno(), json.dumps(config).encode() + b"\n")
                proc.stdin.close()
            except OSError as e:
                log.warning("warm sandbox %s was unusable (%s); starting a cold one", sandbox.id, e)
                return None
            deadline = started + request.timeout_s
            pump = _Pump({proc.stdout.fileno(): bundle_cap(request), proc.stderr.fileno(): _BWRAP_STDERR_CAP})
            try:
                timed_out = not pump.run(deadline)
            finally:
                pump.close()
            if timed_out:
                self._kill(proc, sandbox.cgroup, sandbox.uid)
            elif not self._wait_exit(proc, deadline + 2.0):
                timed_out = True
                self._kill(proc, sandbox.cgroup, sandbox.uid)
            proc.wait()
            wall_ms = int((time.monotonic() - started) * 1000)
            runner_stderr = bytes(pump.buffers[proc.stderr.fileno()])
            bundle = parse_bundle(bytes(pump.buffers[proc.stdout.fileno()]))
            if bundle is None and not timed_out and proc.returncode in (1, 125) and (
                    runner_stderr.startswith(b"bwrap:") or proc.returncode == 125):
                log.warning("sandbox %s failed to start: %r", sandbox.id, runner_stderr[:2000])
                raise YumenError(Code.SANDBOX, "the bubblewrap sandbox could not be created",
                                 hint="see the connector's log; `yumen sandbox check` tests the set-up")
            facts = HostFacts(backend=self.name, runtime_digest=self.runtime.digest, wall_ms=wall_ms,
                              timed_out=timed_out,
                              oom_killed=sandbox.cgroup.oom_killed() if sandbox.cgroup is not None else False,
                              max_rss_kb=sandbox.cgroup.peak_kb() if sandbox.cgroup is not None else None,
                              runner_stderr=runner_stderr)
            report = classify(request, facts, bundle)
            log.info("sandbox %s (%s, warm) finished: %s in %d ms", sandbox.id, self.name, report.status.value, wall_ms)
            return report
        finally:
            self._untrack(warm)
            # Used or not, a warm sandbox never runs a second job.
            _destroy(sandbox)
            shutil.rmtree(warm.directory, ignore_errors=True)
            if pool is not None:
                pool.done()

    @staticmethod
    def _wait_exit(proc: subprocess.Popen, deadline: float) -> bool:
        """Wait for bwrap to exit without reaping it (wait4 collects its rusage afterwards)."""
        pidfd = os.pidfd_open(proc.pid)
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(pidfd, selectors.EVENT_READ)
                return bool(sel.select(max(0.0, deadline - time.monotonic())))
        finally:
            os.close(pidfd)

    @staticmethod
    def _kill(proc: subprocess.Popen, cgroup: JobCgroup | None, uid: int | None) -> None:
        """SIGKILL the outer bwrap's process group; the pid namespace takes the rest with it."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if cgroup is not None:
            cgroup.kill_all()
        elif uid is not None:
            kill_uid(uid)


def _traversable(directory: Path, *, owner: int | None = None) -> bool:
    """Whether any user (or ``owner``, through the directories it owns) may walk from / down to
    ``directory``: every component has o+x, or u+x and belongs to ``owner``."""
    for part in (directory, *directory.parents):
        try:
            st = os.stat(part)
        except OSError:
            return False
        if not (st.st_mode & 0o001 or (owner is not None and st.st_uid == owner and st.st_mode & 0o100)):
            return False
    return True


_SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


@dataclasses.dataclass
class _Warm:
    """One started bubblewrap sandbox waiting on stdin, with what was allocated for it."""

    id: str
    proc: subprocess.Popen
    cgroup: JobCgroup | None
    uid: int | None
    as_bytes: int | None


def _read_waiting(proc: subprocess.Popen, deadline: float) -> bool:
    """Read the launcher's ``waiting`` line, byte by byte (nothing after it may be consumed here)."""
    fd = proc.stdout.fileno()
    got = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not got.endswith(b"\n") and len(got) < 64:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                return False
            byte = os.read(fd, 1)
            if not byte:
                return False
            got += byte
    return bytes(got) == b"waiting\n"


def _destroy(sandbox: _Warm) -> None:
    """Kill a warm sandbox whatever its state (idle, or done with its job) and free its cgroup."""
    BwrapBackend._kill(sandbox.proc, sandbox.cgroup, sandbox.uid)
    sandbox.proc.wait()
    for stream in (sandbox.proc.stdin, sandbox.proc.stdout, sandbox.proc.stderr):
        try:
            stream.close()
        except OSError:
            pass
    if sandbox.cgroup is not None:
        sandbox.cgroup.remove()


def _fill_directory(request: SandboxRequest, directory: str) -> None:
    """Put one job's algorithm, parameters and inputs into a warm sandbox's ``/data`` (read-only to it)."""
    for name, data in (("algorithm.py", bytes(request.algorithm)), ("params.json", request.params_json)):
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o444)
    for dataset, path in sorted(request.inputs.items()):
        source = Path(path).resolve()
        if not source.is_file():
            raise YumenError(Code.INVALID_ARGUMENT, f"input {dataset!r} is not an existing regular file",
                             hint="pass an existing parquet file")
        dest = os.path.join(directory, "input", f"{dataset}.parquet")
        try:
            if not source.stat().st_mode & 0o004:
                raise OSError("private file: copy")
            os.link(source, dest)
        except OSError:
            shutil.copyfile(source, dest)
            os.chmod(dest, 0o444)


_ROOT_PREFIX = "yumen-bwrap-pool-"
_root_lock = threading.Lock()
_root: list[str] = []


def _pool_root() -> str:
    """This process's directory for warm sandboxes' private directories; those of dead processes go.

    A crashed connector's idle sandboxes die with it (``--die-with-parent``, and their stdin
    closes) and their cgroups are swept as empty orphans; their directories are removed here.
    """
    with _root_lock:
        if _root:
            return _root[0]
        base = tempfile.gettempdir()
        for entry in os.scandir(base):
            if not entry.name.startswith(_ROOT_PREFIX):
                continue
            pid = entry.name[len(_ROOT_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(entry.path, ignore_errors=True)
        root = tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{os.getpid()}-", dir=base)
        os.chmod(root, 0o711)
        _root.append(root)
        return root


def kill_uid(uid: int) -> int:
    """SIGKILL every host process running as ``uid`` (a job's private user id); return how many."""
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        except (FileNotFoundError, ProcessLookupError):
            continue
    return killed
