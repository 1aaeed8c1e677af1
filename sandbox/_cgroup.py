"""Per-job control groups for the bubblewrap backend: a hard memory cap and a process cap.

Why cgroups and not only rlimits: RLIMIT_AS limits virtual address space, and polars'
allocator reserves far more address space than it touches (it refuses to start under
512 MiB of RLIMIT_AS while using ~100 MiB). A memory cgroup limits what is resident, counts
every process of the job together (a fork bomb of allocators cannot multiply the limit),
and records OOM kills so the report can say ``memory`` rather than ``killed``.

The job's group is created *inside the group Yumen itself runs in* (never at the root of
the hierarchy), so the host's own limits still bound every sandbox. Both cgroup v1
(``memory`` and ``pids`` hierarchies) and v2 (a delegated subtree) are supported; when
neither is writable the backend falls back to rlimits and says so in ``check()``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JobCgroup", "cgroup_support"]

log = logging.getLogger(__name__)

_ROOT = Path("/sys/fs/cgroup")
_PREFIX = "yumen-sandbox-"


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    return paths


@dataclass(frozen=True, kw_only=True)
class _Layout:
    version: int
    memory_parent: Path
    pids_parent: Path | None


def _detect() -> _Layout | None:
    try:
        paths = _own_paths()
    except OSError:
        return None
    mem_v1 = _ROOT / "memory"
    if "memory" in paths and (mem_v1 / "memory.limit_in_bytes").exists():
        memory_parent = mem_v1 / paths["memory"].lstrip("/")
        pids_parent = _ROOT / "pids" / paths.get("pids", "/").lstrip("/") if "pids" in paths else None
        if pids_parent is not None and not (pids_parent / "pids.max").exists() and pids_parent != _ROOT / "pids":
            pids_parent = None
        return _Layout(version=1, memory_parent=memory_parent, pids_parent=pids_parent)
    if "" in paths and (_ROOT / "cgroup.controllers").exists():
        parent = _ROOT / paths[""].lstrip("/")
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
        except OSError:
            return None
        if "memory" in enabled and "pids" in enabled:
            return _Layout(version=2, memory_parent=parent, pids_parent=parent)
    return None


_LAYOUT: _Layout | None | bool = False


def cgroup_support() -> _Layout | None:
    """The cgroup layout usable for jobs, probed once by creating and removing a group."""
    global _LAYOUT
    if _LAYOUT is not False:
        return _LAYOUT  # type: ignore[return-value]
    layout = _detect()
    if layout is not None:
        probe = layout.memory_parent / f"{_PREFIX}probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as e:
            log.info("cgroups not writable at %s (%s); using rlimits only", layout.memory_parent, e)
            layout = None
    if layout is not None:
        _remove_orphans(layout)
    _LAYOUT = layout
    return layout


def _remove_orphans(layout: _Layout) -> None:
    """Remove empty job groups left by a crashed Yumen (non-empty ones are still running)."""
    for parent in {layout.memory_parent, layout.pids_parent} - {None}:
        for child in parent.glob(_PREFIX + "*"):  # type: ignore[union-attr]
            try:
                child.rmdir()
            except OSError:
                pass


class JobCgroup:
    """The memory and pids groups of one job; processes join by writing cgroup.procs."""

    def __init__(self, layout: _Layout, job_id: str, *, memory_bytes: int, max_pids: int, owner_uid: int) -> None:
        self.layout = layout
        name = _PREFIX + job_id
        self.memory = layout.memory_parent / name
        self.pids = None if layout.pids_parent is None else layout.pids_parent / name
        self.memory.mkdir()
        try:
            if layout.version == 1:
                (self.memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                memsw = self.memory / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    memsw.write_text(str(memory_bytes))
                if self.pids is not None:
                    self.pids.mkdir()
                    (self.pids / "pids.max").write_text(str(max_pids))
            else:
                (self.memory / "memory.max").write_text(str(memory_bytes))
                (self.memory / "memory.swap.max").write_text("0")
                (self.memory / "pids.max").write_text(str(max_pids))
            # The sandbox's first process (running as the job's user) moves itself in.
            for group in self.groups:
                os.chown(group / "cgroup.procs", owner_uid, -1)
        except BaseException:
            self.remove()
            raise

    @property
    def groups(self) -> list[Path]:
        out = [self.memory]
        if self.pids is not None and self.pids != self.memory:
            out.append(self.pids)
        return out

    @property
    def procs_files(self) -> list[str]:
        return [str(g / "cgroup.procs") for g in self.groups]

    def oom_killed(self) -> bool:
        return self.oom_kills() > 0

    def oom_kills(self) -> int:
        """How many processes the kernel killed for memory in this group so far (-1 under OOM now)."""
        try:
            if self.layout.version == 1:
                text = (self.memory / "memory.oom_control").read_text()
                fields = dict(line.split() for line in text.splitlines() if line.strip())
                return -1 if fields.get("under_oom") == "1" else int(fields.get("oom_kill", "0"))
            events = (self.memory / "memory.events").read_text()
            fields = dict(line.split() for line in events.splitlines() if line.strip())
            return int(fields.get("oom_kill", "0"))
        except (OSError, ValueError):
            return 0

    def peak_kb(self) -> int:
        name = "memory.max_usage_in_bytes" if self.layout.version == 1 else "memory.peak"
        try:
            return int((self.memory / name).read_text()) // 1024
        except (OSError, ValueError):
            return 0

    def kill_all(self) -> None:
        """SIGKILL every process still in the group (belt and braces after the pid namespace)."""
        for group in self.groups:
            try:
                pids = (group / "cgroup.procs").read_text().split()
            except OSError:
                continue
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass

    def remove(self) -> None:
        for group in reversed(self.groups):
            for attempt in range(50):
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # Processes killed a moment ago are still exiting.
                    self.kill_all()
                    time.sleep(0.01 * (attempt + 1))
            else:
                log.warning("could not remove cgroup %s", group)
