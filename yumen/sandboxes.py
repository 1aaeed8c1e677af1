"""The sandbox backends by name, weakest isolation first: the one list every part of Yumen uses.

``bwrap`` (bubblewrap: namespaces, seccomp, cgroups on the host kernel) < ``docker`` (a runc
container) < ``gvisor`` (a container under gVisor's user-space kernel). A policy may require a
backend at least as strong as one it names; a department may run a stronger one than asked.
The backends themselves are built by ``yumen.sandbox.get_backend``.
"""

from __future__ import annotations

from yumen.errors import Code, YumenError

__all__ = ["BACKENDS", "at_least", "stronger", "strength"]

BACKENDS: tuple[str, ...] = ("bwrap", "docker", "gvisor")


def strength(name: str) -> int:
    """The rank of ``name`` in :data:`BACKENDS` (0 is the weakest)."""
    if name not in BACKENDS:
        raise YumenError(Code.INVALID_ARGUMENT, f"unknown sandbox backend {name!r}", hint=f"use one of {', '.join(BACKENDS)}")
    return BACKENDS.index(name)


def at_least(name: str, required: str) -> bool:
    """Whether backend ``name`` isolates at least as strongly as ``required``."""
    return strength(name) >= strength(required)


def stronger(name: str, required: str) -> str:
    """``name``, or ``required`` when that one is stronger (empty ``required``: no requirement)."""
    return required if required and strength(required) > strength(name) else name
