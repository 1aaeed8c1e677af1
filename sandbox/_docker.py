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
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from yumen.errors import Code, YumenError

from ._bwrap import bundle_cap, launcher_config, launcher_source, sandbox_env
from ._outcome import HostFacts, classify, parse_bundle
from ._runtime import Runtime, load_runtime
from ._types import SandboxReport, SandboxRequest

__all__ = ["DockerBackend", "SANDBOX_LABEL"]

log = logging.getLogger(__name__)

SANDBOX_LABEL = "org.yumen.sandbox"
OWNER_LABEL = "org.yumen.owner"
_SENTRY_THREADS = 256


class DockerBackend:
    """Runs buyer code in a locked-down container under runc or runsc (gVisor)."""

    def __init__(
        self,
        *,
        runtime: str = "runc",
        runtime_dir: Path | str | None = None,
        docker_url: str | None = None,
        staging_dir: Path | str | None = None,
    ) -> None:
        if runtime not in ("runc", "runsc"):
            raise YumenError(Code.INVALID_ARGUMENT, f"unknown container runtime {runtime!r}", hint="use runc or runsc")
        self.oci_runtime = runtime
        self.name = "gvisor" if runtime == "runsc" else "docker"
        self._runtime_dir = Path(runtime_dir) if runtime_dir else None
        self._docker_url = docker_url
        self._staging_dir = staging_dir
        self._client: Any = None
        self._runtime: Runtime | None = None
        self._swept = False

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

    def _sweep(self) -> None:
        """Remove containers a crashed Yumen left behind (our label, owner process gone)."""
        if self._swept:
            return
        self._swept = True
        for container in self.client.containers.list(all=True, filters={"label": f"{SANDBOX_LABEL}=1"}):
            if _owner_alive(container.labels.get(OWNER_LABEL, "")):
                continue  # another live Yumen process on this host is running it
            log.warning("removing orphaned sandbox container %s", container.short_id)
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

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

    def run(self, request: SandboxRequest) -> SandboxReport:
        import docker.errors
        from docker.types import LogConfig, Ulimit

        runtime = self.runtime
        client = self.client
        self._sweep()
        job_id = secrets.token_hex(6)
        job_dir = tempfile.mkdtemp(prefix="yumen-job-", dir=self._staging_dir)
        os.chmod(job_dir, 0o711)
        container = None
        try:
            mounts = self._stage(request, job_dir)
            scratch = f"size={request.scratch_mb}m"
            config = launcher_config(request, as_bytes=None, protect=True)
            started = time.monotonic()
            try:
                container = client.containers.create(
                    self.image,
                    command=["/usr/bin/python3", "-I", "-c", launcher_source(), json.dumps(config)],
                    name=f"yumen-sandbox-{job_id}",
                    labels={SANDBOX_LABEL: "1", "org.yumen.job": job_id, OWNER_LABEL: _owner()},
                    runtime=self.oci_runtime,
                    user="65534:65534",
                    network_mode="none",
                    read_only=True,
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    # Under gVisor the sentry's own threads live in the container's pids
                    # cgroup; the algorithm's processes are bounded by RLIMIT_NPROC inside.
                    pids_limit=request.max_processes + (_SENTRY_THREADS if self.oci_runtime == "runsc" else 0),
                    mem_limit=request.memory_mb << 20,
                    memswap_limit=request.memory_mb << 20,
                    nano_cpus=int(request.cpus * 1e9),
                    shm_size=request.scratch_mb << 20,
                    tmpfs={
                        "/tmp": f"{scratch},mode=1777",
                        "/data/scratch": f"{scratch},mode=1777",
                        "/data/output": f"size={max(request.output_limit_bytes * 2, 1 << 20)},mode=0777",
                    },
                    mounts=mounts,
                    environment=sandbox_env(request),
                    working_dir="/tmp",
                    hostname="sandbox",
                    ipc_mode="private",
                    ulimits=[
                        Ulimit(name="core", soft=0, hard=0),
                        Ulimit(name="nofile", soft=request.max_open_files, hard=request.max_open_files),
                    ],
                    log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
                    stdin_open=False,
                    detach=True,
                )
                container.start()
            except docker.errors.ImageNotFound:
                raise YumenError(
                    Code.SANDBOX_UNAVAILABLE,
                    f"the runtime image {self.image} is not in the Docker engine",
                    hint="import it: yumen sandbox build-runtime --docker",
                ) from None
            except docker.errors.APIError as e:
                log.warning("sandbox %s could not start: %s", job_id, e)
                raise YumenError(
                    Code.SANDBOX,
                    f"the {self.name} sandbox could not be started",
                    hint="see the connector's log; `yumen sandbox check` tests the set-up",
                ) from None
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
                try:
                    container.remove(force=True)
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as e:
                    log.warning("could not remove sandbox container %s: %s", container.short_id, e)
            shutil.rmtree(job_dir, ignore_errors=True)


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
