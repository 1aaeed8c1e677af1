"""Regenerate the committed gRPC/protobuf code from protos/yumen/v1/*.proto.

Run as ``make protos``. ``tests/unit/test_protos.py`` runs :func:`generate` into a
temporary folder and fails when the committed files differ, so generated code can
never drift from its sources.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc
import grpc_tools

ROOT = Path(__file__).resolve().parent
SOURCES = sorted((ROOT / "yumen" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into ``out_dir`` (mirroring ``yumen/v1``); return the files written."""
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(ROOT)) for p in SOURCES],
    ]
    # protoc resolves the relative names against -I; run from ROOT so they match.
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        rc = protoc.main(args)
    finally:
        os.chdir(cwd)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    return sorted((out_dir / "yumen" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    written = generate(ROOT)
    print("\n".join(str(p.relative_to(ROOT.parent)) for p in written))
    sys.exit(0)
