"""Destruction confirmation: after each job, everything it put on the host is destroyed and checked.

A job may leave data-bearing files on the department's host: the input staged for its sandbox
(a hard link or copy of the pinned snapshot), the block files of sample-and-aggregate, and
the sandbox's own scratch. Every one of them lives under the job's own scratch directory
(``<scratch root>/<job key>/``): the connector stages the input there, writes the blocks
there, and hands the sandbox backend a staging directory there. After the job the connector
removes the whole directory, then checks with ``lstat`` that nothing under it remains; for
Docker and gVisor it also asks the engine that no sandbox container mounting it is left. The
sandbox's in-sandbox scratch (``/tmp``, ``/data/scratch``, ``/data/output``, ``/dev/shm``) is
tmpfs inside its mount namespace or container and is freed by the kernel or the engine when
the sandbox ends; the check above is the connector's evidence that it ended.

The confirmation is signed into the receipt (:class:`yumen.tickets.Receipt` ``destruction``).
Its content is fixed by the job's shape alone, never by what happened: which kinds of item
and how many (one staged input and one sandbox run for an approved algorithm; one staged
input, ``k`` block files and ``k`` sandbox runs for a custom one; nothing for a query, which
stages no file), the mechanism, and as its time the receipt's own time (the release time
fixed before the job ran, for the algorithm tiers). ``verified`` is false only when the
check found something left; what was left goes to the department's log, never into the
receipt. An auditor's ``yumen audit verify`` refuses a log in which an executed job has no
confirmation, a confirmation that does not match the receipt's shape or time, or one that is
not verified (:func:`check_confirmation`).

Retained snapshots get the same treatment when they expire (:func:`destroy_snapshot`): the
file is removed, checked absent, and a signed confirmation is logged by the broker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Callable

from yumen.destruction import (  # noqa: F401 - re-exported for the connector's modules
    BLOCK_FILE,
    MECHANISM,
    SANDBOX_SCRATCH,
    SNAPSHOT_MECHANISM,
    STAGED_INPUT,
    check_confirmation,
    confirmation,
    expected_items,
)

log = logging.getLogger(__name__)

__all__ = [
    "JobScratch",
    "MECHANISM",
    "SNAPSHOT_MECHANISM",
    "check_confirmation",
    "confirmation",
    "default_scratch_root",
    "destroy_snapshot",
    "expected_items",
]

def default_scratch_root(connector_id: str) -> Path:
    """``/tmp/yumen-scratch-<connector>``: a sandbox's user must be able to reach staged inputs,
    so every directory above them has to be traversable, which a state directory need not be."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"yumen-scratch-{connector_id}"


class JobScratch:
    """One job's directory for everything it puts on the host; destroyed and checked after the job."""

    def __init__(self, root: Path, job_id: str, dataset: str) -> None:
        self.root = Path(root)
        key = hashlib.sha256(f"{job_id}\0{dataset}".encode()).hexdigest()[:32]
        self.path = self.root / key

    @staticmethod
    def prepare_root(root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o711)

    def create(self) -> "JobScratch":
        self.prepare_root(self.root)
        self.path.mkdir(mode=0o711, exist_ok=True)
        os.chmod(self.path, 0o711)
        for sub in ("inputs", "blocks", "sandbox"):
            (self.path / sub).mkdir(mode=0o711, exist_ok=True)
            os.chmod(self.path / sub, 0o711)
        return self

    @property
    def blocks(self) -> Path:
        return self.path / "blocks"

    @property
    def sandbox(self) -> Path:
        return self.path / "sandbox"

    def stage_input(self, snapshot: Path) -> Path:
        """The snapshot, readable by the sandbox's user, inside this job's scratch.

        A world-readable snapshot is hard-linked (no copy of the data); a private one is
        copied and made read-only for everyone, so its original's permissions never widen.
        """
        dest = self.path / "inputs" / snapshot.name
        if dest.exists():
            return dest
        try:
            if not snapshot.stat().st_mode & 0o004:
                raise OSError("private snapshot: copy it")
            os.link(snapshot, dest)
        except OSError:
            shutil.copyfile(snapshot, dest)
            os.chmod(dest, 0o444)
        return dest

    def destroy(self, *, unlink: Callable[[Path], None] | None = None, engine: Any = None) -> list[str]:
        """Remove everything under the job's scratch and check; return what is left (empty: all gone).

        ``unlink`` removes one file (the default ``os.unlink``); ``engine`` is a Docker client
        to ask for containers still mounting the scratch.
        """
        remove = unlink or os.unlink
        if self.path.exists():
            for folder, dirs, files in os.walk(self.path, topdown=False):
                for name in files:
                    try:
                        remove(Path(folder) / name)
                    except FileNotFoundError:
                        pass
                    except OSError as e:
                        log.warning("could not remove %s: %s", Path(folder) / name, e)
                for name in dirs:
                    try:
                        os.rmdir(Path(folder) / name)
                    except OSError:
                        pass
            try:
                os.rmdir(self.path)
            except OSError:
                pass
        left = self.remaining()
        if engine is not None:
            left += self._containers_left(engine)
        return left

    def kill_sandboxes(self, *, engine: Any = None) -> list[str]:
        """SIGKILL every sandbox of this job; return what was killed.

        Every sandbox a job runs names a path under the job's scratch: bubblewrap binds its
        input from there (so the path is on bwrap's command line) and Docker mounts it. A
        bubblewrap sandbox is killed by its process group (it runs in a session of its own; the
        kernel then ends its PID namespace), a container through the engine.
        """
        needle = str(self.path).encode() + b"/"
        killed = []
        own_group = os.getpgrp()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if needle not in f.read():
                        continue
                group = os.getpgid(pid)
                if group != own_group and group > 1:
                    os.killpg(group, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
                killed.append(f"process {pid}")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        if engine is not None:
            prefix = str(self.path)
            try:
                for c in engine.containers.list(filters={"label": "org.yumen.sandbox=1"}):
                    if any(str(m.get("Source", "")).startswith(prefix) for m in c.attrs.get("Mounts") or []):
                        c.kill()
                        killed.append(f"container {c.short_id}")
            except Exception as e:  # noqa: BLE001 - the engine may be gone; the container's own limits end it
                log.warning("could not ask the Docker engine for the job's containers: %s", type(e).__name__)
        return killed

    def remaining(self) -> list[str]:
        """Paths under the job's scratch that still exist (checked with ``lstat``)."""
        try:
            os.lstat(self.path)
        except FileNotFoundError:
            return []
        left = [str(self.path)]
        for folder, dirs, files in os.walk(self.path):
            left += [str(Path(folder) / n) for n in (*dirs, *files)]
        return left

    def _containers_left(self, engine: Any) -> list[str]:
        prefix = str(self.path)
        left = []
        try:
            for c in engine.containers.list(all=True, filters={"label": "org.yumen.sandbox=1"}):
                mounts = c.attrs.get("Mounts") or []
                if any(str(m.get("Source", "")).startswith(prefix) for m in mounts):
                    left.append(f"container {c.short_id}")
        except Exception as e:  # noqa: BLE001 - an engine that cannot answer cannot confirm
            left.append(f"the Docker engine did not answer ({type(e).__name__})")
        return left


def destroy_snapshot(path: Path, *, unlink: Callable[[Path], None] | None = None) -> bool:
    """Remove an expired snapshot; True when ``lstat`` then finds it gone."""
    try:
        (unlink or os.unlink)(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("could not remove expired snapshot %s: %s", path, e)
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    return False
