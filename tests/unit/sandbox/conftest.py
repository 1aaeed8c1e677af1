"""Fixtures for the sandbox unit tests: a bubblewrap backend when this host can run one."""

from __future__ import annotations

import pytest

from yumen.errors import YumenError
from yumen.sandbox import BwrapBackend, load_runtime


@pytest.fixture(scope="session")
def bwrap_backend() -> BwrapBackend:
    try:
        load_runtime()
    except YumenError as e:
        pytest.skip(f"no sandbox runtime: {e} (run `yumen sandbox build-runtime`)")
    backend = BwrapBackend()
    try:
        backend.check()
    except YumenError as e:
        pytest.skip(f"bubblewrap unavailable here: {e}")
    return backend
