"""The host's end of a container's attached stdin and stdout (Docker's multiplexed stream).

Warm containers receive their job's settings on stdin and send the launcher's report on
stdout.
"""

from __future__ import annotations

import time
from typing import Any

from ._outcome import parse_bundle

__all__ = ["WAITING", "oom_kills", "read_attached", "wait_until_waiting"]

WAITING = b"waiting\n"  # what a warm launcher writes once it has imported its libraries


def wait_until_waiting(sock: Any, deadline: float) -> bool:
    """Read an attached warm container's stdout up to the launcher's ``waiting`` line (False: it never came)."""
    out, _ = _read_frames(sock, deadline, len(WAITING), lambda out: out.endswith(WAITING))
    return out.endswith(WAITING)


def read_attached(sock: Any, deadline: float, cap: int) -> tuple[bytes, bool]:
    """Read an attached container's multiplexed stdout until the launcher's report; keep the last ``cap`` bytes.

    Returns ``(stdout, timed_out)``. Stops at the end of the stream (the container exited)
    or as soon as a whole report line has arrived: the launcher writes it as its last act,
    and waiting for the engine to notice the exit would add tens of milliseconds. Anything
    the job left running is killed when the container is removed. Frames are Docker's: one
    byte stream type, three zero bytes, a big-endian 32-bit length, then the payload.
    """
    return _read_frames(sock, deadline, cap, lambda out: out.endswith(b"\n") and parse_bundle(bytes(out)) is not None)


def _read_frames(sock: Any, deadline: float, cap: int, done: Any) -> tuple[bytes, bool]:
    buffer = bytearray()
    out = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(out), True
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            return bytes(out), True
        except OSError:
            chunk = b""
        if not chunk:
            break
        buffer += chunk
        while len(buffer) >= 8:
            size = int.from_bytes(buffer[4:8], "big")
            if len(buffer) < 8 + size:
                break
            if buffer[0] == 1:
                out += buffer[8 : 8 + size]
                if len(out) > cap:
                    del out[: len(out) - cap]
            del buffer[: 8 + size]
        if done(out):
            return bytes(out), False
    return bytes(out), False


def oom_kills(container_id: str) -> int:
    """The container's memory cgroup's OOM-kill count, where the host shows it (cgroup v1 or v2)."""
    for path in (f"/sys/fs/cgroup/memory/docker/{container_id}/memory.oom_control",
                 f"/sys/fs/cgroup/docker/{container_id}/memory.events",
                 f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.events"):
        try:
            with open(path) as f:
                fields = dict(line.split() for line in f if line.strip())
            return int(fields.get("oom_kill", "0"))
        except (OSError, ValueError):
            continue
    return 0
