"""Isolation backends that run untrusted buyer code: bubblewrap (default), Docker, gVisor.

Every backend takes a :class:`SandboxRequest` and returns a :class:`SandboxReport`; they
share one runtime root filesystem (see :func:`build_runtime`) and one set of status rules.
The threat model and the limits are described in docs/sandbox.md.
"""

from ._bwrap import BwrapBackend
from ._registry import BACKENDS, get_backend
from ._runtime import Runtime, build_runtime, default_runtime_dir, load_runtime, rootfs_digest
from ._types import SandboxBackend, SandboxReport, SandboxRequest, Status, Usage, parse_result

__all__ = [
    "BACKENDS",
    "BwrapBackend",
    "Runtime",
    "SandboxBackend",
    "SandboxReport",
    "SandboxRequest",
    "Status",
    "Usage",
    "build_runtime",
    "default_runtime_dir",
    "get_backend",
    "load_runtime",
    "parse_result",
    "rootfs_digest",
]
