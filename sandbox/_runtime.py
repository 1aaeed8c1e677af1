"""The one runtime every backend runs buyer code in: a Debian bookworm root filesystem.

Why a separate root filesystem and not the host's ``/usr``: the host's Python lives under
``/root`` next to keys and configuration, and a sandbox that binds host directories
read-only still shows them. With a dedicated rootfs mounted as ``/``, no host file is
visible at all, and the same bytes serve bubblewrap (as a directory) and Docker/gVisor
(imported as an image), so every backend runs the same interpreter and libraries.

The rootfs is identified by a content digest: SHA-256 over a sorted manifest of every
path, its type, permission bits and content hash (or link target). The digest is recorded
with every execution, so an auditor can tell which runtime produced a result.

Layout of the runtime directory::

    DIR/rootfs/         the root filesystem (read-only to every sandbox)
    DIR/manifest.txt    one line per path, hashed into the digest
    DIR/runtime.json    {"digest": ..., "packages": ..., "docker_image": ...}
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from yumen.errors import Code, YumenError

__all__ = [
    "DEFAULT_RUNTIME_DIR",
    "PYTHON_PACKAGES",
    "Runtime",
    "build_runtime",
    "default_runtime_dir",
    "load_runtime",
    "rootfs_digest",
]

log = logging.getLogger(__name__)

DEFAULT_RUNTIME_DIR = Path("/var/lib/yumen/runtime")
SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3-minimal", "python3-numpy")
# Pinned so that two builds on different days install the same libraries.
PYTHON_PACKAGES = {"numpy": "2.3.5", "polars": "1.36.1", "pyarrow": "22.0.0"}
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"
# Mount points the backends place their tmpfs and bind mounts on.
DATA_DIRS = ("data", "data/input", "data/output", "data/scratch")
WRITABLE_DIRS = ("data/output", "data/scratch")


def default_runtime_dir() -> Path:
    return Path(os.environ.get("YUMEN_RUNTIME_DIR", str(DEFAULT_RUNTIME_DIR)))


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """A built runtime: where its rootfs is, its digest, and its Docker image if imported."""

    directory: Path
    digest: str
    packages: dict[str, str]
    docker_image: str | None = None

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs"

    @property
    def image_tag(self) -> str:
        """The Docker tag derived from the digest, so a tag always names one rootfs."""
        return "yumen-runtime:" + self.digest.removeprefix("sha256:")[:16]


def rootfs_digest(rootfs: Path) -> tuple[str, str]:
    """Return ``(digest, manifest)`` for a rootfs; see the module docstring."""
    lines: list[str] = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, rootfs)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(full)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                lines.append(f"l {perm:o} {rel} -> {os.readlink(full)}")
            elif stat.S_ISDIR(st.st_mode):
                lines.append(f"d {perm:o} {rel}")
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                lines.append(f"f {perm:o} {rel} {h.hexdigest()}")
            else:
                lines.append(f"o {perm:o} {rel} {stat.S_IFMT(st.st_mode):o}")
    manifest = "\n".join(lines) + "\n"
    return "sha256:" + hashlib.sha256(manifest.encode()).hexdigest(), manifest


@functools.lru_cache(maxsize=8)
def _load_cached(directory: str, mtime_ns: int) -> Runtime:
    meta = json.loads((Path(directory) / "runtime.json").read_text())
    return Runtime(
        directory=Path(directory),
        digest=meta["digest"],
        packages=dict(meta.get("packages", {})),
        docker_image=meta.get("docker_image"),
    )


def load_runtime(directory: Path | None = None) -> Runtime:
    """Load a built runtime, or raise SANDBOX_UNAVAILABLE saying how to build it.

    The digest is read from ``runtime.json`` (computed once at build time), never
    recomputed here: hashing ~700 MB per execution would dominate start-up.
    """
    directory = Path(directory or default_runtime_dir())
    meta = directory / "runtime.json"
    try:
        mtime = meta.stat().st_mtime_ns
    except FileNotFoundError:
        raise YumenError(
            Code.SANDBOX_UNAVAILABLE,
            f"no sandbox runtime at {directory}",
            hint=f"build it once with: yumen sandbox build-runtime --dir {directory}",
        ) from None
    if not (directory / "rootfs" / "usr" / "bin" / "python3").exists():
        raise YumenError(
            Code.SANDBOX_UNAVAILABLE,
            f"the sandbox runtime at {directory} has no rootfs/usr/bin/python3",
            hint=f"rebuild it: rm -rf {directory} && yumen sandbox build-runtime --dir {directory}",
        )
    return _load_cached(str(directory), mtime)


def _run(argv: list[str], **kwargs) -> None:
    log.info("runtime build: %s", " ".join(argv[:4]))
    try:
        subprocess.run(argv, check=True, **kwargs)
    except FileNotFoundError:
        raise YumenError(
            Code.SANDBOX_UNAVAILABLE,
            f"{argv[0]} is not installed",
            hint=f"install it (Debian: apt-get install -y {argv[0]})",
        ) from None
    except subprocess.CalledProcessError as e:
        raise YumenError(
            Code.SANDBOX, f"runtime build step {argv[0]} failed with exit code {e.returncode}"
        ) from None


def _write_meta(directory: Path, meta: dict) -> None:
    tmp = directory / "runtime.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / "runtime.json")


def _import_docker_image(runtime: Runtime) -> str:
    """``tar -C rootfs -c . | docker import - TAG`` (no registry is needed or used)."""
    tag = runtime.image_tag
    probe = subprocess.run(["docker", "image", "inspect", tag], capture_output=True)
    if probe.returncode == 0:
        return tag
    tar = subprocess.Popen(["tar", "-C", str(runtime.rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    try:
        _run(
            ["docker", "import", "--change", f"LABEL org.yumen.runtime-digest={runtime.digest}", "-", tag],
            stdin=tar.stdout,
            stdout=subprocess.DEVNULL,
        )
    finally:
        tar.stdout.close()
        tar.wait()
    return tag


def build_runtime(
    directory: Path | None = None,
    *,
    docker: bool = False,
    mirror: str = "http://deb.debian.org/debian",
    rebuild: bool = False,
) -> Runtime:
    """Build the runtime if it is not there yet (idempotent), optionally import it into Docker.

    Steps: ``debootstrap --variant=minbase`` (Debian's python3 and its shared libraries),
    then ``pip install --target`` run by the host's pip (the pinned wheels of numpy,
    polars and pyarrow; pip inside the rootfs would need network and TLS the sandbox must
    not have), then the mount points the backends need, then the digest. The build goes
    to a temporary directory renamed into place, under a lock, so a crash or a concurrent
    build never leaves a half-built runtime that looks complete.
    """
    directory = Path(directory or default_runtime_dir())
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runtime: Runtime | None = None
        if not rebuild:
            try:
                runtime = load_runtime(directory)
            except YumenError:
                runtime = None
        if runtime is None:
            runtime = _build(directory, mirror)
        if docker and runtime.docker_image is None:
            tag = _import_docker_image(runtime)
            meta = json.loads((directory / "runtime.json").read_text())
            meta["docker_image"] = tag
            _write_meta(directory, meta)
            runtime = load_runtime(directory)
        return runtime


def _build(directory: Path, mirror: str) -> Runtime:
    if os.geteuid() != 0:
        raise YumenError(
            Code.SANDBOX_UNAVAILABLE,
            "building the sandbox runtime needs root (debootstrap)",
            hint="run yumen sandbox build-runtime as root, once per host",
        )
    staging = directory / f"rootfs.build-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    started = time.monotonic()
    _run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", SUITE, str(staging), mirror],
        stdout=subprocess.DEVNULL,
    )
    _run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-warn-script-location", "--only-binary=:all:", "--target", str(staging / SITE_PACKAGES),
            *(f"{name}=={version}" for name, version in PYTHON_PACKAGES.items()),
        ]
    )
    # Package caches are not needed at run time and only make the digest unstable.
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (staging / cache).glob("*"):
            if entry.is_file():
                entry.unlink()
    for sub in DATA_DIRS:
        (staging / sub).mkdir(parents=True, exist_ok=True)
    # Docker copies a mount point's mode onto the tmpfs mounted over it, so the writable
    # ones must already be world-writable (sticky) in the image.
    for sub in WRITABLE_DIRS:
        os.chmod(staging / sub, 0o1777)
    _run(["chroot", str(staging), "python3", "-I", "-c", "import numpy, polars, pyarrow"])
    digest, manifest = rootfs_digest(staging)
    old = directory / "rootfs"
    (directory / "runtime.json").unlink(missing_ok=True)
    if old.exists():
        shutil.rmtree(old)
    os.replace(staging, old)
    (directory / "manifest.txt").write_text(manifest)
    _write_meta(
        directory,
        {
            "digest": digest,
            "suite": SUITE,
            "debian_packages": list(DEBIAN_PACKAGES),
            "packages": dict(PYTHON_PACKAGES),
            "built_at": int(time.time()),
            "docker_image": None,
        },
    )
    log.info("sandbox runtime %s built in %.0f s", digest, time.monotonic() - started)
    return load_runtime(directory)
