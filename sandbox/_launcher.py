"""The first program inside every sandbox: applies limits, runs the algorithm, reports.

This file is not imported by Yumen; its source is handed to the runtime's ``python3 -I -c``
inside the sandbox, so it uses the standard library only. It:

1. forks; the child lowers its resource limits (they cannot be raised again without
   privileges the sandbox does not have), points stdout/stderr at pipes, and executes
   ``/data/algorithm.py`` as ``__main__`` in the same interpreter (no second start-up);
   (a warm sandbox first imports the libraries the algorithm names, then blocks reading its
   limits from stdin; see ``_pool``);
2. the parent drains both pipes, keeping at most ``log_limit`` bytes of each and counting
   the rest (so 1 GiB of output costs CPU, never memory or disk), and waits for the child
   through a pidfd, so a daemon that keeps the pipes open cannot hold the job;
3. reads ``/data/output/result.json`` without following links and only if it is a
   regular file, at most ``output_limit + 1`` bytes;
4. prints one JSON line (the bundle) to its own stdout and exits.

Nothing here is trusted by the host: the algorithm runs as the same user and could forge
the bundle, but a forged bundle only misreports the algorithm's own outcome. The host
caps what it reads and validates the result itself.
"""

import binascii
import json
import os
import resource
import select
import sys

MEMORY_EXIT = 113  # the child's exit code when the algorithm raised MemoryError


def _b64(data):
    # binascii, not base64: the base64 module's imports cost start-up time on every job.
    return binascii.b2a_base64(data, newline=False)


def _child(cfg, out_w, err_w):
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.closerange(3, 1 << 16)
    limits = [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, cfg["nofile"]),
        (resource.RLIMIT_FSIZE, cfg["fsize"]),
        (resource.RLIMIT_NPROC, cfg["nproc"]),
    ]
    if cfg.get("as_bytes"):
        limits.append((resource.RLIMIT_AS, cfg["as_bytes"]))
    for which, value in limits:
        resource.setrlimit(which, (value, value))
    # SIGXCPU at the soft limit, SIGKILL one second later if it is ignored.
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stdin = open(0, "r", closefd=False)
    path = "/data/algorithm.py"
    sys.argv = [path]
    code = 1
    try:
        with open(path, "rb") as f:
            source = f.read()
        namespace = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
        exec(compile(source, path, "exec"), namespace)
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except MemoryError:
        code = MEMORY_EXIT
        try:
            sys.stderr.write("MemoryError: the algorithm ran out of memory\n")
        except BaseException:
            pass
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(code)


def _read_result(limit):
    try:
        fd = os.open("/data/output/result.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return {"result_error": "missing"}
    except OSError as e:
        return {"result_error": "symlink" if e.errno == 40 else "unreadable"}
    try:
        st = os.fstat(fd)
        import stat

        if not stat.S_ISREG(st.st_mode):
            return {"result_error": "not-regular"}
        if st.st_nlink != 1:
            return {"result_error": "hardlink"}
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
        return {"result_size": max(st.st_size, len(data)), "result_b64": _b64(data[: limit + 1]).decode()}
    finally:
        os.close(fd)


def _set_dumpable(value):
    import ctypes

    ctypes.CDLL(None).prctl(4, value, 0, 0, 0)  # PR_SET_DUMPABLE


_STDIN = bytearray()  # read from stdin but not yet used: lines can arrive together


def _next_line(limit):
    """The next line on stdin as JSON, or None at its end (or past ``limit`` bytes)."""
    while True:
        end = _STDIN.find(b"\n")
        if end >= 0:
            line = bytes(_STDIN[:end])
            del _STDIN[: end + 1]
            return json.loads(line)
        if len(_STDIN) > limit:
            return None
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return None
        _STDIN.extend(chunk)


def _read_job_settings():
    """A warm sandbox's settings: one JSON line on stdin, sent by the host when a job takes it."""
    settings = _next_line(1 << 20)
    if settings is None:
        os._exit(125)  # the host went away before sending a job: nothing ran
    return settings


def main():
    cfg = json.loads(sys.argv[1])
    if cfg.get("protect"):
        # Without a seccomp ban on ptrace (Docker's default profile allows it), a
        # non-dumpable launcher cannot be traced or have its fds opened via /proc by the
        # algorithm, which runs as the same user. The child becomes dumpable again.
        _set_dumpable(0)
    if cfg.get("from_stdin"):
        # A warm sandbox: started before any job existed. It imports the libraries its job's
        # algorithm names (so the job does not pay for them), then waits here for that job.
        for name in cfg.get("preload", ()):
            __import__(name)
        os.write(1, b"waiting\n")  # the host counts it as warm only from here
        settings = _read_job_settings()
        settings["protect"] = cfg.get("protect", False)
        cfg = settings
    _write_line(_run_once(cfg))
    os._exit(0)


def _write_line(obj):
    data = memoryview(("\n" + json.dumps(obj) + "\n").encode())
    while data:
        data = data[os.write(1, data) :]


def _run_once(cfg):
    """Run the algorithm once in a forked child; return the bundle."""
    cap = cfg["log_limit"]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    # Exit notification: a pidfd where the kernel has them; otherwise (e.g. older gVisor)
    # SIGCHLD written to a pipe by Python's wakeup fd, installed before the fork.
    try:
        os.close(os.pidfd_open(os.getpid()))
        wake_r = None
    except OSError:
        import signal

        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
    pid = os.fork()
    if pid == 0:
        if cfg.get("protect"):
            _set_dumpable(1)
        if wake_r is not None:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
        os.close(out_r)
        os.close(err_r)
        _child(cfg, out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    pidfd = os.pidfd_open(pid) if wake_r is None else wake_r
    kept = {out_r: bytearray(), err_r: bytearray()}
    total = {out_r: 0, err_r: 0}
    open_fds = {out_r, err_r}
    status = None
    grace_deadline = None
    tail = b""
    import time

    while open_fds or status is None:
        if status is not None:
            # The algorithm has exited; a descendant may still hold the pipes open.
            remaining = grace_deadline - time.monotonic()
            if remaining <= 0:
                break
            timeout = remaining
        else:
            timeout = None
        watched = list(open_fds) + ([pidfd] if status is None else [])
        ready, _, _ = select.select(watched, [], [], timeout)
        for fd in ready:
            if fd == pidfd:
                if wake_r is None:
                    _, status = os.waitpid(pid, 0)
                else:
                    os.read(wake_r, 512)
                    done, wait_status = os.waitpid(pid, os.WNOHANG)
                    if done == 0:
                        continue
                    status = wait_status
                grace_deadline = time.monotonic() + 0.2
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.discard(fd)
                continue
            total[fd] += len(chunk)
            room = cap - len(kept[fd])
            if room > 0:
                kept[fd] += chunk[:room]
            if fd == err_r:
                # The end of stderr says how a process died (e.g. an allocator's abort message).
                tail = (tail + chunk)[-512:]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    bundle = {
        "v": 1,
        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "memory": os.WIFEXITED(status) and os.WEXITSTATUS(status) == MEMORY_EXIT,
        "cpu_ms": int((usage.ru_utime + usage.ru_stime) * 1000),
        "max_rss_kb": int(usage.ru_maxrss),
        "stdout_b64": _b64(bytes(kept[out_r])).decode(),
        "stderr_b64": _b64(bytes(kept[err_r])).decode(),
        "stderr_tail_b64": _b64(tail).decode(),
        "stdout_bytes": total[out_r],
        "stderr_bytes": total[err_r],
    }
    bundle.update(_read_result(cfg["output_limit"]))
    return bundle


main()
