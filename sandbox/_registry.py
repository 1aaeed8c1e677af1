"""Choosing a backend by name: the one place that knows which names exist."""

from __future__ import annotations

from yumen.errors import Code, YumenError
from yumen.sandboxes import BACKENDS

from ._types import SandboxBackend

__all__ = ["BACKENDS", "get_backend"]


def get_backend(name: str = "bwrap", **options) -> SandboxBackend:
    """Build the backend called ``name`` ("bwrap", "docker" or "gvisor") with its options.

    Construction is cheap and does not touch the engine; call ``check()`` to learn early
    whether the backend can run here.
    """
    if name == "bwrap":
        from ._bwrap import BwrapBackend

        return BwrapBackend(**options)
    if name in ("docker", "gvisor"):
        from ._docker import DockerBackend

        return DockerBackend(runtime="runsc" if name == "gvisor" else "runc", **options)
    raise YumenError(
        Code.INVALID_ARGUMENT,
        f"unknown sandbox backend {name!r}",
        hint=f"choose one of: {', '.join(BACKENDS)}",
    )
