"""The runtime digest and loading errors (the build itself is exercised by CI's build step)."""

from __future__ import annotations

import os

import pytest

from yumen.errors import Code, YumenError
from yumen.sandbox import load_runtime, rootfs_digest


def _tree(root):
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_bytes(b"binary")
    os.symlink("tool", root / "usr" / "bin" / "alias")


def test_rootfs_digest_is_stable_and_sensitive_to_content_mode_and_links(tmp_path):
    a = tmp_path / "a"
    _tree(a)
    first, manifest = rootfs_digest(a)
    assert first.startswith("sha256:") and "usr/bin/alias -> tool" in manifest
    assert rootfs_digest(a)[0] == first
    (a / "usr" / "bin" / "tool").write_bytes(b"binarY")
    changed_content = rootfs_digest(a)[0]
    os.chmod(a / "usr" / "bin" / "tool", 0o755)
    changed_mode = rootfs_digest(a)[0]
    os.unlink(a / "usr" / "bin" / "alias")
    os.symlink("/etc/shadow", a / "usr" / "bin" / "alias")
    changed_link = rootfs_digest(a)[0]
    assert len({first, changed_content, changed_mode, changed_link}) == 4


def test_load_runtime_says_how_to_build_a_missing_runtime(tmp_path):
    with pytest.raises(YumenError) as e:
        load_runtime(tmp_path / "none")
    assert e.value.code is Code.SANDBOX_UNAVAILABLE
    assert "build-runtime" in e.value.hint
