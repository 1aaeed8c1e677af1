"""``yumen sandbox ...``: run an algorithm locally, build the runtime, check a backend.

``yumen sandbox run`` prints exactly one JSON object (``SandboxReport.to_json()``) on
stdout and exits with a code derived from the status (see ``STATUS_EXIT_CODES``), so a
script can branch on either. The algorithm's own stdout/stderr are not printed unless
``--show-logs`` is given (they go to stderr then): on a department's host they may echo
raw rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from yumen.errors import Code, YumenError

from ._registry import BACKENDS, get_backend
from ._runtime import build_runtime, default_runtime_dir
from ._types import DATASET_ID_PATTERN, SandboxRequest, Status

__all__ = ["STATUS_EXIT_CODES", "register"]

# Above the range of YumenError exit codes (1-9), one per non-ok status.
STATUS_EXIT_CODES = {
    Status.OK: 0,
    Status.ERROR: 10,
    Status.TIMEOUT: 11,
    Status.MEMORY: 12,
    Status.OUTPUT_TOO_LARGE: 13,
    Status.INVALID_OUTPUT: 14,
    Status.KILLED: 15,
}


def register(subparsers: Any) -> None:
    """Add ``sandbox run``, ``sandbox build-runtime`` and ``sandbox check`` to the ``yumen`` parser."""
    sandbox = subparsers.add_parser("sandbox", help="run untrusted algorithms in isolation")
    sub = sandbox.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND", required=True)

    run = sub.add_parser("run", help="run an algorithm locally and print its report as JSON")
    run.add_argument("algorithm", type=Path, metavar="ALGO.py")
    run.add_argument("--backend", choices=BACKENDS, default="bwrap")
    run.add_argument("--data", action="append", default=[], type=Path, metavar="FILE",
                     help="a parquet or CSV input; its dataset id is the file stem (repeatable)")
    run.add_argument("--param", action="append", default=[], metavar="K=V",
                     help="a parameter; V is parsed as JSON when it parses, else kept as a string")
    run.add_argument("--timeout", type=float, default=60.0, metavar="S")
    run.add_argument("--memory", type=int, default=512, metavar="MB")
    run.add_argument("--output-limit", type=int, default=64 * 1024, metavar="BYTES")
    run.add_argument("--runtime-dir", type=Path, default=None)
    run.add_argument("--show-logs", action="store_true", help="copy the algorithm's stdout/stderr to stderr")
    run.set_defaults(func=_run)

    build = sub.add_parser("build-runtime", help="build (or reuse) the sandbox runtime rootfs")
    build.add_argument("--dir", type=Path, default=None, help=f"default: {default_runtime_dir()}")
    build.add_argument("--docker", action="store_true", help="also import it as a Docker image")
    build.add_argument("--rebuild", action="store_true", help="build again even if one exists")
    build.add_argument("--mirror", default="http://deb.debian.org/debian")
    build.set_defaults(func=_build)

    check = sub.add_parser("check", help="verify that a backend can run here")
    check.add_argument("--backend", choices=BACKENDS, default="bwrap")
    check.add_argument("--runtime-dir", type=Path, default=None)
    check.set_defaults(func=_check)


def parse_param(text: str) -> tuple[str, Any]:
    """``K=V`` -> (K, JSON value of V, or V itself when it is not JSON)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise YumenError(Code.INVALID_ARGUMENT, f"--param {text!r} is not K=V", hint="write e.g. --param eps=0.5")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _inputs(files: list[Path], tmp: Path) -> dict[str, Path]:
    inputs: dict[str, Path] = {}
    for path in files:
        dataset = path.stem
        if not DATASET_ID_PATTERN.match(dataset):
            raise YumenError(Code.INVALID_ARGUMENT, f"{path.name}: {dataset!r} is not a usable dataset id",
                             hint="rename the file to letters, digits, '.', '_' or '-'")
        if dataset in inputs:
            raise YumenError(Code.INVALID_ARGUMENT, f"two --data files have the stem {dataset!r}")
        if not path.is_file():
            raise YumenError(Code.NOT_FOUND, f"--data {path}: no such file")
        if path.suffix.lower() == ".csv":
            import polars as pl

            converted = tmp / f"{dataset}.parquet"
            pl.read_csv(path).write_parquet(converted)
            inputs[dataset] = converted
        elif path.suffix.lower() == ".parquet":
            inputs[dataset] = path.resolve()
        else:
            raise YumenError(Code.INVALID_ARGUMENT, f"--data {path}: expected a .parquet or .csv file")
    return inputs


def _run(args: argparse.Namespace) -> int:
    try:
        algorithm = args.algorithm.read_bytes()
    except OSError as e:
        raise YumenError(Code.NOT_FOUND, f"cannot read {args.algorithm}: {e.strerror}") from None
    params = dict(parse_param(p) for p in args.param)
    with tempfile.TemporaryDirectory(prefix="yumen-cli-") as tmp:
        request = SandboxRequest(
            algorithm=algorithm,
            inputs=_inputs(args.data, Path(tmp)),
            params=params,
            timeout_s=args.timeout,
            memory_mb=args.memory,
            output_limit_bytes=args.output_limit,
        )
        report = get_backend(args.backend, runtime_dir=args.runtime_dir).run(request)
    if args.show_logs:
        sys.stderr.buffer.write(report.stdout + report.stderr)
    print(json.dumps(report.to_json(), sort_keys=True))
    return STATUS_EXIT_CODES[report.status]


def _build(args: argparse.Namespace) -> int:
    runtime = build_runtime(args.dir, docker=args.docker, mirror=args.mirror, rebuild=args.rebuild)
    print(json.dumps({"directory": str(runtime.directory), "digest": runtime.digest,
                      "docker_image": runtime.docker_image, "packages": runtime.packages}, sort_keys=True))
    return 0


def _check(args: argparse.Namespace) -> int:
    get_backend(args.backend, runtime_dir=args.runtime_dir).check()
    print(f"{args.backend}: ok")
    return 0
