"""Docker backends: runc (``docker``) and gVisor (``gvisor``, runtime ``runsc``).

Both run the same runtime rootfs, imported once as ``yumen-runtime:<digest prefix>`` by
``yumen sandbox build-runtime --docker`` (no registry is involved), and the same launcher
as the bubblewrap backend, so statuses and results mean the same on every backend.

Container settings: no network (``network_mode=none``; under gVisor also runsc's own
``--network=none``), read-only root, all capabilities dropped, ``no-new-privileges``,
user 65534, Docker's default seccomp profile (runc) or the gVisor sentry (runsc), a pids
limit, a memory limit with swap equal to it (no swap), a CPU quota, size-capped tmpfs
scratch, inputs bind-mounted read-only, and a bounded json-file log. Every container
carries the label ``org.yumen.sandbox=1``; it is removed in a ``finally`` on every path,
and containers left by a crashed process are removed when a backend starts.

What gVisor adds over runc: the algorithm talks to gVisor's user-space kernel, not to the
host kernel, so a Linux kernel bug reachable from a system call is not enough to escape.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from yumen.errors import Code, YumenError

from ._bwrap import bundle_cap, launcher_config, launcher_source, sandbox_env
from ._outcome import HostFacts, classify, parse_bundle
from ._attach import read_attached, wait_until_waiting
from ._pool import POOL_LABEL, PooledRuns, PoolShape, WarmContainer, WarmPool, new_id, pool_for, reaper
from ._runtime import Runtime, load_runtime
from ._types import SandboxReport, SandboxRequest

__all__ = ["DockerBackend", "SANDBOX_LABEL", "sweep_orphans"]

log = logging.getLogger(__name__)

SANDBOX_LABEL = "org.yumen.sandbox"
OWNER_LABEL = "org.yumen.owner"
_SENTRY_THREADS = 256
_WARM_START_S = 120.0  # how long a warm container may take to start and import its libraries
_SWEPT: set[str | None] = set()
_SWEEP_LOCK = threading.Lock()


class DockerBackend(PooledRuns):
    """Runs buyer code in a locked-down container under runc or runsc (gVisor)."""

    def __init__(
        self,
        *,
        runtime: str = "runc",
        runtime_dir: Path | str | None = None,
        docker_url: str | None = None,
        staging_dir: Path | str | None = None,
        pool_size: int = 0,
        pool_dir: Path | str | None = None,
    ) -> None:
        if runtime not in ("runc", "runsc"):
            raise YumenError(Code.INVALID_ARGUMENT, f"unknown container runtime {runtime!r}", hint="use runc or runsc")
        self.oci_runtime = runtime
        self.name = "gvisor" if runtime == "runsc" else "docker"
        self._runtime_dir = Path(runtime_dir) if runtime_dir else None
        self._docker_url = docker_url
        self._staging_dir = staging_dir
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or not 0 <= pool_size <= 64:
            raise YumenError(Code.INVALID_ARGUMENT, f"pool_size must be an integer from 0 to 64, got {pool_size!r}",
                             hint="0 turns warm sandboxes off")
        self.pool_size = pool_size
        self._init_pooled_runs()
        self._pool_dir = str(pool_dir) if pool_dir else None
        self._client: Any = None
        self._runtime: Runtime | None = None

    # -- set-up ---------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = load_runtime(self._runtime_dir)
        return self._runtime

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import docker
            except ImportError:
                raise YumenError(
                    Code.SANDBOX_UNAVAILABLE,
                    "the Docker SDK for Python is not installed",
                    hint="pip install docker",
                ) from None
            try:
                client = docker.DockerClient(base_url=self._docker_url) if self._docker_url else docker.from_env()
                client.ping()
            except Exception as e:  # noqa: BLE001 - any failure here means "no engine"
                raise YumenError(
                    Code.SANDBOX_UNAVAILABLE,
                    f"no Docker engine answers ({type(e).__name__})",
                    hint="start one: sudo scripts/setup_docker.sh",
                ) from None
            self._client = client
        return self._client

    @property
    def image(self) -> str:
        return self.runtime.docker_image or self.runtime.image_tag

    def check(self) -> None:
        """Verify the engine, the OCI runtime and the imported runtime image."""
        client = self.client
        runtimes = client.info().get("Runtimes", {})
        if self.oci_runtime not in runtimes:
            raise YumenError(
                Code.SANDBOX_UNAVAILABLE,
                f"the Docker engine has no {self.oci_runtime!r} runtime",
                hint="install gVisor and register it: sudo scripts/setup_docker.sh",
            )
        import docker.errors

        try:
            client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise YumenError(
                Code.SANDBOX_UNAVAILABLE,
                f"the runtime image {self.image} is not in the Docker engine",
                hint="import it: yumen sandbox build-runtime --docker",
            ) from None
        self._sweep()
        self.warm_up()

    def _sweep(self) -> None:
        """Remove containers a crashed Yumen left behind (our label, owner process gone).

        Once per engine per process: orphans only appear when a process dies, so sweeping
        before every job would only add an engine round trip to each.
        """
        with _SWEEP_LOCK:
            if self._docker_url in _SWEPT:
                return
            _SWEPT.add(self._docker_url)
        sweep_orphans(self.client)

    # -- one execution ----------------------------------------------------------------

    def _stage(self, request: SandboxRequest, job_dir: str) -> list[Any]:
        from docker.types import Mount

        algo = os.path.join(job_dir, "algorithm.py")
        params = os.path.join(job_dir, "params.json")
        for path, data in ((algo, bytes(request.algorithm)), (params, request.params_json)):
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o444)
        mounts = [
            Mount("/data/algorithm.py", algo, type="bind", read_only=True),
            Mount("/data/params.json", params, type="bind", read_only=True),
        ]
        for index, (dataset, path) in enumerate(sorted(request.inputs.items())):
            source = Path(path).resolve()
            try:
                st = source.stat()
            except OSError as e:
                raise YumenError(Code.INVALID_ARGUMENT, f"input {dataset!r} cannot be opened: {e.strerror}") from None
            if not source.is_file():
                raise YumenError(Code.INVALID_ARGUMENT, f"input {dataset!r} is not a regular file")
            if not st.st_mode & 0o004 and not (st.st_uid == 65534 and st.st_mode & 0o400):
                # The container's user 65534 must be able to read it (a file staged privately for
                # it is bound as it is); copy rather than chmod the original.
                copy = os.path.join(job_dir, f"input-{index}.parquet")
                shutil.copyfile(source, copy)
                os.chmod(copy, 0o444)
                source = Path(copy)
            mounts.append(Mount(f"/data/input/{dataset}.parquet", str(source), type="bind", read_only=True))
        return mounts

    def _container_kwargs(self, shape: PoolShape, *, command: list[str], mounts: list[Any], job_id: str,
                          warm: bool) -> dict[str, Any]:
        """Every setting of a sandbox container; a warm one differs only in its stdin and labels."""
        from docker.types import LogConfig, Ulimit

        scratch = f"size={shape.scratch_mb}m"
        labels = {SANDBOX_LABEL: "1", "org.yumen.job": job_id, OWNER_LABEL: _owner()}
        if warm:
            labels[POOL_LABEL] = "1"
        return dict(
            image=self.image,
            command=command,
            name=f"yumen-{'warm' if warm else 'sandbox'}-{job_id}",
            labels=labels,
            runtime=self.oci_runtime,
            user="65534:65534",
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            # Under gVisor the sentry's own threads live in the container's pids
            # cgroup; the algorithm's processes are bounded by RLIMIT_NPROC inside.
            pids_limit=shape.max_processes + (_SENTRY_THREADS if self.oci_runtime == "runsc" else 0),
            mem_limit=shape.memory_mb << 20,
            memswap_limit=shape.memory_mb << 20,
            nano_cpus=int(shape.cpus * 1e9),
            shm_size=shape.scratch_mb << 20,
            tmpfs={
                "/tmp": f"{scratch},mode=1777",
                "/data/scratch": f"{scratch},mode=1777",
                "/data/output": f"size={max(shape.output_limit_bytes * 2, 1 << 20)},mode=0777",
            },
            mounts=mounts,
            environment=sandbox_env(shape),
            working_dir="/tmp",
            hostname="sandbox",
            ipc_mode="private",
            ulimits=[
                Ulimit(name="core", soft=0, hard=0),
                Ulimit(name="nofile", soft=shape.max_open_files, hard=shape.max_open_files),
            ],
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            # A warm container's launcher blocks reading its job's settings from stdin.
            stdin_open=warm,
            detach=True,
        )

    def _start(self, kwargs: dict[str, Any], job_id: str, attached: list[Any] | None = None) -> Any:
        """Create and start a container; with ``attached``, attach its stdin/stdout first (nothing is missed)."""
        import docker.errors

        container = None
        try:
            container = self.client.containers.create(**kwargs)
            if attached is not None:
                attached.append(self.client.api.attach_socket(container.id,
                                                              params={"stdin": 1, "stdout": 1, "stream": 1}))
            container.start()
            return container
        except docker.errors.ImageNotFound:
            raise YumenError(
                Code.SANDBOX_UNAVAILABLE,
                f"the runtime image {self.image} is not in the Docker engine",
                hint="import it: yumen sandbox build-runtime --docker",
            ) from None
        except docker.errors.APIError as e:
            if container is not None:
                _remove(container)
            log.warning("sandbox %s could not start: %s", job_id, e)
            raise YumenError(
                Code.SANDBOX,
                f"the {self.name} sandbox could not be started",
                hint="see the connector's log; `yumen sandbox check` tests the set-up",
            ) from None

    # -- the warm pool ------------------------------------------------------------------

    def _create_warm(self, shape: PoolShape, directory: str) -> Any:
        from docker.types import Mount

        job_id = new_id()
        command = ["/usr/bin/python3", "-I", "-c", launcher_source(), json.dumps({"from_stdin": True, "protect": True,
                                                                           "preload": list(shape.preload)})]
        mounts = [Mount("/data", directory, type="bind", read_only=True)]
        attached: list[Any] = []
        try:
            container = self._start(self._container_kwargs(shape, command=command, mounts=mounts, job_id=job_id,
                                                           warm=True), job_id, attached)
        except BaseException:
            for attachment in attached:
                attachment.close()
            raise
        attachment = attached[0]
        try:
            # Ready only once its libraries are imported: a job that takes it must not wait for them.
            if not wait_until_waiting(getattr(attachment, "_sock", attachment), time.monotonic() + _WARM_START_S):
                raise YumenError(Code.SANDBOX, "a warm container's launcher did not start")
        except Exception:
            attachment.close()
            _remove(container)
            raise
        return container, attachment

    def pool(self, shape: PoolShape) -> WarmPool | None:
        """The process-wide pool of warm containers of ``shape`` (None when pooling is off)."""
        if self.pool_size <= 0:
            return None
        key = (self._docker_url or "", self.oci_runtime, self.image)
        return pool_for(key, shape, size=self.pool_size, root=self._pool_dir, create=self._create_warm,
                        remove=_remove, name=self.name)

    def warm_up(self, request: SandboxRequest | None = None) -> WarmPool | None:
        """Start filling the pool for ``request``'s shape (the default request's when None)."""
        return self.pool(PoolShape.of(request or SandboxRequest(algorithm=b"")))

    def _fill_directory(self, request: SandboxRequest, directory: str) -> None:
        """Put one job's algorithm, parameters and inputs into a warm container's ``/data``."""
        for name, data in (("algorithm.py", bytes(request.algorithm)), ("params.json", request.params_json)):
            path = os.path.join(directory, name)
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o444)
        for dataset, path in sorted(request.inputs.items()):
            source = _input_file(dataset, path)
            dest = os.path.join(directory, "input", f"{dataset}.parquet")
            try:
                if not source.stat().st_mode & 0o004:
                    raise OSError("private file: copy")
                os.link(source, dest)
            except OSError:
                shutil.copyfile(source, dest)
                os.chmod(dest, 0o444)

    def _run_warm(self, request: SandboxRequest, warm: WarmContainer, pool: WarmPool | None) -> SandboxReport | None:
        """Run on a warm container; None when it turned out unusable before the job was sent."""
        container = warm.container
        self._track(warm, lambda: _kill(container))
        try:
            self._fill_directory(request, warm.directory)
            config = launcher_config(request, as_bytes=None, protect=True)
            started = time.monotonic()
            sock = warm.attachment
            raw = getattr(sock, "_sock", sock)
            try:
                raw.sendall(json.dumps(config).encode() + b"\n")
            except OSError as e:
                log.warning("warm sandbox %s was unusable (%s); starting a cold one", container.short_id, e)
                return None
            stdout, timed_out = read_attached(raw, started + request.timeout_s, bundle_cap(request))
            if timed_out:
                _kill(container)
            wall_ms = int((time.monotonic() - started) * 1000)
            bundle = parse_bundle(stdout)
            oom = False
            if bundle is None or bundle.get("signal") is not None:
                oom = _oom_killed(container)
            facts = HostFacts(backend=self.name, runtime_digest=self.runtime.digest, wall_ms=wall_ms,
                              timed_out=timed_out, oom_killed=oom)
            report = classify(request, facts, bundle)
            log.info("sandbox %s (%s, warm) finished: %s in %d ms", container.short_id, self.name,
                     report.status.value, wall_ms)
            return report
        finally:
            self._untrack(warm)
            # Used or not, a warm container never runs a second job.
            warm.attachment.close()
            shutil.rmtree(warm.directory, ignore_errors=True)
            reaper().put(_remove, container)
            if pool is not None:
                pool.done()

    # -- one execution ----------------------------------------------------------------

    def run(self, request: SandboxRequest) -> SandboxReport:
        """Run one job: in a warm sandbox when the pool has one of its shape, else in a cold one."""
        self._sweep()
        return self.run_pooled(request)

    def _run_cold(self, request: SandboxRequest) -> SandboxReport:
        import docker.errors

        runtime = self.runtime
        job_id = new_id()
        job_dir = tempfile.mkdtemp(prefix="yumen-job-", dir=self._staging_dir)
        os.chmod(job_dir, 0o711)
        container = None
        try:
            mounts = self._stage(request, job_dir)
            config = launcher_config(request, as_bytes=None, protect=True)
            command = ["/usr/bin/python3", "-I", "-c", launcher_source(), json.dumps(config)]
            kwargs = self._container_kwargs(PoolShape.of(request), command=command, mounts=mounts, job_id=job_id,
                                            warm=False)
            started = time.monotonic()
            container = self._start(kwargs, job_id)
            timed_out = False
            try:
                container.wait(timeout=max(0.001, started + request.timeout_s - time.monotonic()))
            except Exception:  # noqa: BLE001 - the SDK signals its read timeout with several types
                timed_out = True
                try:
                    container.kill()
                except docker.errors.APIError:
                    pass
                container.wait(timeout=30)
            wall_ms = int((time.monotonic() - started) * 1000)
            try:
                container.reload()
                state = container.attrs.get("State", {})
                raw = container.logs(stdout=True, stderr=False)
            except docker.errors.APIError as e:
                # Removed under us (e.g. an operator's cleanup): no report to read.
                log.warning("sandbox %s vanished before its logs were read: %s", job_id, e)
                state, raw = {}, b""
            stdout = raw[-bundle_cap(request) :] if len(raw) > bundle_cap(request) else raw
            facts = HostFacts(
                backend=self.name,
                runtime_digest=runtime.digest,
                wall_ms=wall_ms,
                timed_out=timed_out,
                oom_killed=bool(state.get("OOMKilled")),
            )
            report = classify(request, facts, parse_bundle(stdout))
            log.info("sandbox %s (%s) finished: %s in %d ms", job_id, self.name, report.status.value, wall_ms)
            return report
        finally:
            if container is not None:
                _remove(container)
            shutil.rmtree(job_dir, ignore_errors=True)


def _input_file(dataset: str, path: Path | str) -> Path:
    source = Path(path).resolve()
    try:
        source.stat()
    except OSError as e:
        raise YumenError(Code.INVALID_ARGUMENT, f"input {dataset!r} cannot be opened: {e.strerror}") from None
    if not source.is_file():
        raise YumenError(Code.INVALID_ARGUMENT, f"input {dataset!r} is not a regular file")
    return source


def _kill(container: Any) -> None:
    import docker.errors

    try:
        container.kill()
    except docker.errors.APIError:
        pass
    try:
        container.wait(timeout=30)
    except Exception:  # noqa: BLE001 - removal (force) follows anyway
        pass


def _oom_killed(container: Any) -> bool:
    import docker.errors

    try:
        container.wait(timeout=30)
        container.reload()
        return bool(container.attrs.get("State", {}).get("OOMKilled"))
    except (docker.errors.APIError, Exception):  # noqa: BLE001 - gone: no OOM record to read
        return False


def _remove(container: Any) -> None:
    import docker.errors

    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as e:
        log.warning("could not remove sandbox container %s: %s", container.short_id, e)


def sweep_orphans(client: Any) -> int:
    """Remove sandbox containers (warm or used) whose owning process is gone; return how many.

    Lists without inspecting each container (the SDK's ``containers.list`` inspects them one
    by one and fails when another process removes one in between).
    """
    removed = 0
    for entry in client.api.containers(all=True, filters={"label": f"{SANDBOX_LABEL}=1"}):
        if _owner_alive((entry.get("Labels") or {}).get(OWNER_LABEL, "")):
            continue  # another live Yumen process on this host is running it
        log.warning("removing orphaned sandbox container %s", entry["Id"][:12])
        try:
            client.api.remove_container(entry["Id"], force=True)
            removed += 1
        except Exception:  # noqa: BLE001 - already gone
            pass
    return removed


def _owner() -> str:
    """``host:pid:start-time`` of this process, so a sweep can tell a live owner from a reused pid."""
    return f"{os.uname().nodename}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != os.uname().nodename or not pid.isdigit():
        return False
    return _start_time(int(pid)) == started
