"""Reading the TOML configuration files of the broker and the connectors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Callable

from yumen.errors import Code, YumenError

__all__ = ["read_toml"]


def read_toml(path: Path, what: str) -> tuple[dict[str, Any], Callable[[str], Path]]:
    """Parse ``path``; return the document and a resolver of paths relative to its folder."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise YumenError(Code.CONFIG, f"cannot read {what} {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise YumenError(Code.CONFIG, f"{what} {path} is not valid TOML: {e}") from None
    base = path.parent.resolve()

    def resolve(value: str) -> Path:
        q = Path(value)
        return q if q.is_absolute() else base / q

    return doc, resolve
