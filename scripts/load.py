#!/usr/bin/env python3
"""Keep every core of this machine busy, for stress runs (`make test-stress`).

    python3 scripts/load.py [--workers N] [--parent PID] [--seconds S]

Starts one spinning process per core (``--workers``, default ``os.cpu_count()``) at normal
priority, so the code under test competes for every core as it would on a busy host, and
runs until it is told to stop. It stops, taking its spinners with it, on SIGTERM, SIGINT or
SIGHUP, when ``--seconds`` have passed, or when the process ``--parent`` names is gone (so a
test runner that dies without cleaning up does not leave the machine loaded). The spinners
ask the kernel to kill them when this process dies (PR_SET_PDEATHSIG), so even a SIGKILL of
this process stops them.

It prints one line, ``load: N workers (pids …)``, once every worker runs.
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing
import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _spin(parent: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller stops us, not a terminal's ^C
    x = 0
    while True:  # pure CPU: no memory, no I/O, no syscalls to speak of
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="spinning processes (default: cores)")
    ap.add_argument("--parent", type=int, default=0, help="stop when this process is gone")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: never)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")

    stop = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stop
        stop = True

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    ctx = multiprocessing.get_context("fork")
    me = os.getpid()
    workers = [ctx.Process(target=_spin, args=(me,), daemon=True) for _ in range(args.workers)]
    for w in workers:
        w.start()
    print(f"load: {len(workers)} workers (pids {' '.join(str(w.pid) for w in workers)})", flush=True)
    deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
    try:
        while not stop:
            if args.parent and not _alive(args.parent):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if not all(w.is_alive() for w in workers):
                print("load: a worker died; stopping", file=sys.stderr, flush=True)
                break
            time.sleep(0.2)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
        for w in workers:
            w.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
