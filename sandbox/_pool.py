"""Warm sandboxes: fresh, started, never-used containers waiting for exactly one job each.

Why: creating and starting a container costs ~180 ms under runc and ~360 ms under gVisor
(the engine's bookkeeping, the OCI runtime, and for gVisor a whole user-space kernel),
more than most algorithms run. Everything in that cost is the same for every job of one
*shape* (the container-level limits: memory, processes, CPUs, scratch and output sizes,
open files), so it can be paid ahead of time.

What a warm container is: created and started with every limit and setting of a cold one
(no network, read-only root, all capabilities dropped, ``no-new-privileges``, user 65534,
memory and pids limits, size-capped tmpfs, the ``org.yumen.sandbox`` and owner labels),
running the launcher, which blocks reading its job's settings from the container's
stdin before doing anything else. Its ``/data`` is a read-only bind of a private, empty
host directory. Nothing of a job is in it yet: no algorithm, no parameters, no input.

Taking one for a job: the job's algorithm, parameters and inputs are written (inputs
hard-linked or copied) into that container's private directory, then the launcher's
settings are sent on the attached stdin; the launcher runs the job exactly as in a cold
container and exits, and the container is removed in the background. A container is
taken by at most one job and never returned to the pool; a job that finds the pool
empty starts a cold container instead (it never waits for a refill).

Lifecycle: a background thread keeps ``size`` containers per shape started; containers
are labelled with the owning process (host, pid, start time), so when the process
crashes or is killed, the next process's orphan sweep removes them (and containers it
holds idle are removed when it exits normally).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
from collections import deque
from typing import Any, Callable

__all__ = ["PRELOAD", "PoolShape", "PooledRuns", "WarmContainer", "WarmPool"]

log = logging.getLogger(__name__)

POOL_LABEL = "org.yumen.pool"
_MAX_SHAPES = 8  # shapes warmed at once per engine and runtime; others always start cold
# Imported by a warm sandbox's launcher before it is handed a job: those of the runtime's
# heavy libraries the algorithm's source names (tens of milliseconds each, per job, otherwise;
# memory the job's limit covers when imported but unused, hence only those named).
PRELOAD = ("numpy", "polars", "pyarrow")
_RETRY_S = 5.0


@dataclasses.dataclass(frozen=True)
class PoolShape:
    """The container-level limits of a request: what a warm container must already have."""

    memory_mb: int
    max_processes: int
    cpus: float
    scratch_mb: int
    output_limit_bytes: int
    max_open_files: int
    preload: tuple[str, ...] = ()  # libraries the launcher imports before it waits for its job

    @classmethod
    def of(cls, request: Any) -> PoolShape:
        source = bytes(request.algorithm)
        return cls(memory_mb=request.memory_mb, max_processes=request.max_processes, cpus=float(request.cpus),
                   scratch_mb=request.scratch_mb, output_limit_bytes=request.output_limit_bytes,
                   max_open_files=request.max_open_files,
                   preload=tuple(name for name in PRELOAD if name.encode() in source))


@dataclasses.dataclass
class WarmContainer:
    """One started container and its private host directory (mounted read-only at ``/data``)."""

    container: Any
    directory: str
    attachment: Any = None  # the container's stdin/stdout stream, opened while it waited


class WarmPool:
    """Started, unused containers of one shape; see the module docstring.

    ``create`` builds and starts one container for a private directory (it is the
    backend's own container factory, so a warm container has exactly a cold one's
    settings) and returns it with its attached stdin/stdout stream; ``remove`` removes
    one container whatever its state.
    """

    def __init__(self, *, size: int, shape: PoolShape, root: str,
                 create: Callable[[PoolShape, str], tuple[Any, Any]], remove: Callable[[Any], None], name: str) -> None:
        self.size = size
        self.shape = shape
        self.name = name
        self.root = root
        self.create = create
        self._remove = remove
        self._idle: deque[WarmContainer] = deque()
        self._lock = threading.Condition()
        self._closed = False
        self._taken = 0
        self._missed = 0
        self.taken_ids: deque[str] = deque(maxlen=1024)  # the most recent, for tests and diagnostics
        self._refill = threading.Thread(target=self._fill_loop, name=f"warm-{name}", daemon=True)
        self._refill.start()

    # -- taking -------------------------------------------------------------------------

    def take(self) -> WarmContainer | None:
        """A fresh container for one job, or None when none is ready (start a cold one)."""
        with self._lock:
            if self._closed or not self._idle:
                self._missed += 1
                self._lock.notify_all()
                return None
            warm = self._idle.popleft()
            self._taken += 1
            self.taken_ids.append(warm.container.id)
            self._lock.notify_all()  # refill now
            return warm

    def done(self) -> None:
        """The job that took a container has ended (nothing to do: the refill began when it was taken).

        The refill starts when a sandbox is taken, not when its job ends: when the next
        sandbox starts (and so how long it has been up when a job takes it, which that job
        can read) must not depend on how long the previous job ran.
        """

    def idle_ids(self) -> set[str]:
        with self._lock:
            return {w.container.id for w in self._idle}

    def wait_full(self, timeout_s: float) -> bool:
        """Block until ``size`` containers are ready (benchmarks and tests), or the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while len(self._idle) < self.size and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return not self._closed

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"idle": len(self._idle), "taken": self._taken, "missed": self._missed}

    # -- filling ------------------------------------------------------------------------

    def _fill_loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and len(self._idle) >= self.size:
                    self._lock.wait()
                if self._closed:
                    return
            directory = private_dir(self.root)
            try:
                container, attachment = self.create(self.shape, directory)
            except Exception as e:  # noqa: BLE001 - an engine hiccup must not end the refill thread
                shutil.rmtree(directory, ignore_errors=True)
                log.warning("warm %s sandbox could not be started (%s); retrying in %.0f s", self.name, e, _RETRY_S)
                with self._lock:
                    self._lock.wait(_RETRY_S)
                continue
            with self._lock:
                if not self._closed:
                    self._idle.append(WarmContainer(container=container, directory=directory, attachment=attachment))
                    self._lock.notify_all()
                    continue
            # closed while it started: it never joins the pool
            discard(self._remove, WarmContainer(container=container, directory=directory, attachment=attachment))

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop refilling and remove every idle container (they never ran a job).

        Waits for a container being started to finish starting, so that it is removed too.
        """
        with self._lock:
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
            self._lock.notify_all()
        for warm in idle:
            discard(self._remove, warm)
        if self._refill is not threading.current_thread():
            self._refill.join(timeout_s)


    def idle(self) -> list[Any]:
        """The idle sandboxes themselves (tests: told apart from a job's leftovers)."""
        with self._lock:
            return [w.container for w in self._idle]


def fresh(pool: WarmPool) -> WarmContainer:
    """A sandbox of ``pool``'s shape started now for one job, exactly as the pool starts them.

    What a job finds inside (the launcher's state, imported libraries, pids) is then the
    same whether the pool had one ready or not; only how long the job waited differs.
    """
    directory = private_dir(pool.root)
    try:
        container, attachment = pool.create(pool.shape, directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return WarmContainer(container=container, directory=directory, attachment=attachment)


def private_dir(root: str) -> str:
    """A fresh directory laid out as the container's ``/data``: empty ``input``, two mount points."""
    directory = tempfile.mkdtemp(prefix="yumen-warm-", dir=root)
    os.chmod(directory, 0o755)
    os.mkdir(os.path.join(directory, "input"), 0o755)
    for sub in ("output", "scratch"):
        os.mkdir(os.path.join(directory, sub))
        os.chmod(os.path.join(directory, sub), 0o1777)
    return directory


def discard(remove: Callable[[Any], None], warm: WarmContainer) -> None:
    try:
        if warm.attachment is not None:
            warm.attachment.close()
        remove(warm.container)
    finally:
        shutil.rmtree(warm.directory, ignore_errors=True)


class Reaper:
    """Removes used containers in the background, so removal is not on a job's path.

    A used container has already exited (its launcher wrote the report and ended), so
    nothing runs in it while it waits here; a crash before removal leaves it to the next
    process's orphan sweep.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], None], Any] | None] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="sandbox-reaper", daemon=True)
        self._thread.start()

    def put(self, remove: Callable[[Any], None], container: Any) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put((remove, container))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            remove, container = item
            try:
                remove(container)
            except Exception as e:  # noqa: BLE001 - logged; the orphan sweep is the backstop
                log.warning("could not remove sandbox container %s: %s", getattr(container, "short_id", "?"), e)
            with self._lock:
                self._pending -= 1
                self._lock.notify_all()

    def drain(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True


_registry_lock = threading.Lock()
_pools: dict[tuple, WarmPool] = {}
_roots: list[str] = []  # directories made here for pools' private directories
_reaper: Reaper | None = None


def reaper() -> Reaper:
    global _reaper
    with _registry_lock:
        if _reaper is None:
            _reaper = Reaper()
        return _reaper


def pool_for(key: tuple, shape: PoolShape, *, size: int, root: str | None,
             create: Callable[[PoolShape, str], tuple[Any, Any]], remove: Callable[[Any], None], name: str) -> WarmPool | None:
    """The process-wide pool of ``shape`` for one engine/runtime/image ``key``; None past the shape cap."""
    with _registry_lock:
        pool = _pools.get((key, shape))
        if pool is not None:
            return pool
        if sum(1 for k, _ in _pools if k == key) >= _MAX_SHAPES:
            return None
        if root is None:
            root = tempfile.mkdtemp(prefix="yumen-warm-root-")
            os.chmod(root, 0o711)
            _roots.append(root)
        pool = WarmPool(size=size, shape=shape, root=root, create=create, remove=remove, name=name)
        _pools[(key, shape)] = pool
        return pool


def pools() -> list[WarmPool]:
    with _registry_lock:
        return list(_pools.values())


def close_pools() -> None:
    """Remove every idle warm container and wait briefly for background removals."""
    with _registry_lock:
        all_pools = list(_pools.values())
        _pools.clear()
        rip = _reaper
    for pool in all_pools:
        pool.close()
    if rip is not None:
        rip.drain(30.0)
    while _roots:
        try:
            os.rmdir(_roots.pop())
        except OSError:
            pass  # a private directory is still in use by a running job


atexit.register(close_pools)


def new_id() -> str:
    return secrets.token_hex(6)


class PooledRuns:
    """The run path of a backend with warm sandboxes (bubblewrap and Docker alike).

    A job takes a warm sandbox of its shape when one is ready; when none is, one is started
    right then the way the pool starts them, so that what the job finds inside does not
    depend on whether the pool had one (only when it starts does). A backend provides
    ``name``, ``pool(shape)``, ``_run_cold(request)`` and ``_run_warm(request, warm, pool)``
    (None when the warm sandbox turned out unusable before the job was sent), and registers
    each warm sandbox running a job with :meth:`_track` so a stop order can reach it.
    """

    name: str

    def _init_pooled_runs(self) -> None:
        self._running: dict[int, Callable[[], None]] = {}  # warm sandboxes running a job: how to kill each
        self._running_lock = threading.Lock()

    def run_pooled(self, request: Any) -> Any:
        from yumen.errors import Code, YumenError

        pool = self.pool(PoolShape.of(request))  # type: ignore[attr-defined]  # provided by the backend
        if pool is None:
            return self._run_cold(request)  # type: ignore[attr-defined]  # provided by the backend
        warm = pool.take()
        if warm is not None:
            report = self._run_warm(request, warm, pool)  # type: ignore[attr-defined]  # provided by the backend
            if report is not None:
                return report
        report = self._run_warm(request, fresh(pool), None)  # type: ignore[attr-defined]  # provided by the backend
        if report is None:
            raise YumenError(Code.SANDBOX, f"the {self.name} sandbox could not be started",
                             hint="see the connector's log; `yumen sandbox check` tests the set-up")
        return report

    def _track(self, warm: WarmContainer, kill: Callable[[], None]) -> None:
        with self._running_lock:
            self._running[id(warm)] = kill

    def _untrack(self, warm: WarmContainer) -> None:
        with self._running_lock:
            self._running.pop(id(warm), None)

    def kill_running(self) -> list[str]:
        """Kill every warm sandbox this backend has given a job and that still runs it (a cold
        sandbox names its job's staging folder, on its command line or as a mount, and is found
        there)."""
        with self._running_lock:
            kills = list(self._running.items())
        for _, kill in kills:
            kill()
        return [f"warm {self.name} sandbox {key}" for key, _ in kills]
