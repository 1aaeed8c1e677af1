"""Running sample-and-aggregate blocks one after another in one sandbox.

Every block used to pay a whole sandbox start plus the Python, numpy and polars imports
(~115 ms) for a few milliseconds of work. Here one sandbox per batch of blocks starts
the launcher in *blocks* mode: it imports the libraries once and forks one fresh child
per block (see ``_launcher``). The host drives it over two streams, one block at a time:

1. it puts the block's file, alone, into the directory the sandbox sees as
   ``/data/input`` (a read-only bind, so the block cannot write there);
2. it sends ``{"block": i}``; the launcher forks the block's supervisor and algorithm with
   the same limits, filter and result checks as a single run (plus a filter against
   System V IPC and POSIX message queues, which would outlive the block);
3. the launcher answers with the block's report, kills every other process in the
   sandbox, has the writable directories emptied and their metadata put back, and says
   ``{"ready": true}``;
4. only then does the host remove the block's file and go on with the next block.

A block never coexists with another block's file or process, and finds nothing another
block wrote. The launcher never holds a block's rows: it reads nothing but the host's
one-line commands. A block that hangs is killed at its own time limit by the launcher,
and if the launcher itself does not answer in time (or says the reset failed) the host
kills the sandbox and runs the remaining blocks in a new one, so one block's failure stays
that block's. docs/sandbox.md lists what isolates blocks and what is shared (the sandbox's
limits, the clock and kernel counters).
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._outcome import HostFacts, classify
from ._types import SandboxReport, SandboxRequest

__all__ = ["BLOCK_PRELOAD", "BlockChannel", "PipeChannel", "blocks_config", "drive_blocks", "place_block",
           "run_in_batches"]

log = logging.getLogger(__name__)

# Imported once per sandbox before any block: those of the runtime's heavy libraries the
# algorithm's source names (each costs tens of milliseconds per block otherwise, and memory
# the block's limit also covers when imported but unused).
BLOCK_PRELOAD = ("numpy", "polars", "pyarrow")
# Writable places a block could leave something in; the launcher empties them between blocks.
RESET_DIRS = ("/tmp", "/dev/shm", "/data/output", "/data/scratch")
# How long past a block's own time limit the host waits for the launcher's "ready".
_GRACE_S = 5.0
_STDERR_CAP = 16 * 1024


class BlockChannel:
    """The host's end of one blocks-mode sandbox: send a line, read lines with a deadline."""

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def read_line(self, deadline: float) -> bytes | None:
        """The next line, or None at the end of the stream or the deadline."""
        raise NotImplementedError


class PipeChannel(BlockChannel):
    """A blocks-mode launcher's stdin and stdout; its stderr is drained on the side (capped)."""

    def __init__(self, proc: subprocess.Popen, cap: int) -> None:
        self._in = proc.stdin.fileno()
        self._out = proc.stdout.fileno()
        self._err = proc.stderr.fileno()
        os.set_blocking(self._out, False)
        os.set_blocking(self._err, False)
        self._buffer = bytearray()
        self._cap = cap
        self.stderr = bytearray()
        self._open = {self._out, self._err}

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._in, view):]

    def read_line(self, deadline: float) -> bytes | None:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if self._out not in self._open:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select(list(self._open), [], [], remaining)
            for fd in ready:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    self._open.discard(fd)
                elif fd == self._err:
                    self.stderr += chunk[: max(0, _STDERR_CAP - len(self.stderr))]
                else:
                    self._buffer += chunk
                    if len(self._buffer) > self._cap and self._buffer.find(b"\n") < 0:
                        del self._buffer[: len(self._buffer) - self._cap]  # an over-long line: keep its tail


def blocks_config(request: SandboxRequest, filter_bpf: bytes) -> dict[str, Any]:
    import binascii

    preload = [name for name in BLOCK_PRELOAD if name.encode() in bytes(request.algorithm)]
    return {"timeout_s": request.timeout_s, "preload": preload, "reset": list(RESET_DIRS),
            "filter_b64": binascii.b2a_base64(filter_bpf, newline=False).decode()}


def place_block(source: Path, dest: str) -> None:
    """Put one block's file where the sandbox will see it (a link when others may read it, else a copy)."""
    try:
        if not source.stat().st_mode & 0o004:
            raise OSError("private file: copy")
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
        os.chmod(dest, 0o444)


def drive_blocks(channel: BlockChannel, request: SandboxRequest, paths: Sequence[Path | Callable[[], Path]], *, input_dir: str,
                 dataset: str, facts: Callable[[int, bool], HostFacts]) -> tuple[list[SandboxReport], bool]:
    """Run ``paths`` in order through one sandbox; return the reports so far and whether it is still usable.

    Stops early (fewer reports than paths) when the sandbox ended or could not be reset;
    the caller runs the rest in a new sandbox. ``facts(wall_ms, timed_out)`` adds what
    the host knows about the block that just ran.
    """
    reports: list[SandboxReport] = []
    dest = os.path.join(input_dir, f"{dataset}.parquet")
    for index, path in enumerate(paths):
        # a callable gives the block's file when it is ready: the sandbox starts meanwhile
        place_block(Path(path() if callable(path) else path), dest)
        try:
            started = time.monotonic()
            deadline = started + request.timeout_s + _GRACE_S
            bundle: dict[str, Any] | None = None
            ready: bool | None = None
            try:
                channel.send(json.dumps({"block": index}).encode() + b"\n")
            except OSError:
                ready = False  # the sandbox is gone
            while ready is None:
                line = channel.read_line(deadline)
                if line is None:
                    ready = False
                    break
                try:
                    msg = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if not isinstance(msg, dict):
                    continue
                if msg.get("v") == 1 and msg.get("block") == index:
                    bundle = msg
                elif "ready" in msg:
                    ready = msg["ready"] is True
            wall_ms = int((time.monotonic() - started) * 1000)
        finally:
            os.unlink(dest)
        timed_out = (bundle is not None and bundle.get("timed_out") is True) or (
            bundle is None and time.monotonic() >= deadline)
        if bundle is not None and bundle.get("timed_out") is True:
            bundle = None
        reports.append(classify(request, facts(wall_ms, timed_out), bundle))
        if not ready:
            return reports, False
    return reports, True


def run_in_batches(paths: Sequence[Path], batch: Callable[[Sequence[Path]], list[SandboxReport]]) -> list[SandboxReport]:
    """Run every path, starting a new sandbox whenever one stops early."""
    reports: list[SandboxReport] = []
    while len(reports) < len(paths):
        done = batch(paths[len(reports):])
        if not done:
            raise RuntimeError("a blocks sandbox returned no report")  # drive_blocks always reports a sent block
        reports += done
    return reports
