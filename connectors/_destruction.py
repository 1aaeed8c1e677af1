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
import re
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
    "sweep_scratch",
    "destroy_snapshot",
    "expected_items",
]

def default_scratch_root(connector_id: str, state_dir: Path | None = None) -> Path:
    """``/tmp/yumen-scratch-<connector>-<digest of the state directory>``: a sandbox's user must
    be able to reach its staged inputs, so every directory above a job's own has to be
    traversable (0711), which a state directory need not be. The state directory's digest
    keeps two connectors of the same id on one host (a test run, a second instance) apart:
    each removes what its own crash left at start-up (:func:`sweep_scratch`)."""
    import tempfile

    tail = ""
    if state_dir is not None:
        tail = "-" + hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"yumen-scratch-{connector_id}{tail}"


# A job's scratch directory is named by a digest (JobScratch); nothing else under the root is ours.
_JOB_DIR = re.compile(r"[0-9a-f]{32}")


def sweep_scratch(root: Path) -> list[str]:
    """Remove every job's scratch a previous process left under ``root`` (it crashed or was
    killed mid-job); return what was removed. Run at start-up, before any job runs. Only
    directories named as :class:`JobScratch` names them are touched, so a scratch root that a
    department pointed at a shared folder loses nothing else."""
    removed = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if _JOB_DIR.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


class JobScratch:
    """One job's directory for everything it puts on the host; destroyed and checked after the job.

    It is private to the job's sandbox: the directory and its folders are mode 0700 and every
    file in them 0400, all owned by ``owner``, the user the job's sandboxes run as (a job's
    own uid under bubblewrap as root, 65534 in a container; None: the connector's own user,
    which then runs the sandbox). Only that user and root can read what is staged; the
    parents (the scratch root, 0711) can be traversed but not listed.
    """

    def __init__(self, root: Path, job_id: str, dataset: str, *, owner: int | None = None) -> None:
        self.root = Path(root)
        key = hashlib.sha256(f"{job_id}\0{dataset}".encode()).hexdigest()[:32]
        self.path = self.root / key
        self.owner = owner

    @staticmethod
    def prepare_root(root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o711)

    def _private(self, path: Path, mode: int) -> None:
        if self.owner is not None:
            os.chown(path, self.owner, self.owner)
        os.chmod(path, mode)

    def create(self) -> "JobScratch":
        self.prepare_root(self.root)
        self.path.mkdir(mode=0o700, exist_ok=True)
        self._private(self.path, 0o700)
        for sub in ("inputs", "blocks", "sandbox"):
            (self.path / sub).mkdir(mode=0o700, exist_ok=True)
            self._private(self.path / sub, 0o700)
        return self

    def own(self, path: Path) -> None:
        """Make a file written into the scratch (a block) readable by the job's sandbox only."""
        self._private(path, 0o400)

    @property
    def blocks(self) -> Path:
        return self.path / "blocks"

    @property
    def sandbox(self) -> Path:
        return self.path / "sandbox"

    def stage_input(self, snapshot: Path) -> Path:
        """A copy of the snapshot for the job's sandbox, inside this job's scratch, mode 0400 and
        owned by the sandbox's user. A copy, not a hard link: a link shares the snapshot's inode,
        so it could not be given another owner or mode than the snapshot's own."""
        dest = self.path / "inputs" / snapshot.name
        if dest.exists():
            return dest
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, open(snapshot, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        self.own(dest)
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
