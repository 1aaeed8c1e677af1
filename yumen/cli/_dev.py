"""Developer commands: ``yumen dev run`` and ``yumen dev mock``, on mock data, spending no budget.

``yumen dev run ALGO.py --dataset ID`` fetches the dataset's registration from the
broker's catalog (metadata only), generates a mock from it (see :mod:`yumen.mock`), and
runs the algorithm against the mock in the same sandbox contract a real job uses: the
input at ``/data/input/<dataset>.parquet``, parameters at ``/data/params.json``, one JSON
object of named numbers written to ``/data/output/result.json``, under the same limits.
Nothing is submitted, so no policy decision is made and no privacy budget is reserved.

With ``--registration FILE`` the registration is read from a file instead of the broker,
for working offline: a registration object, a list of them, or the output of
``yumen catalog list --json`` / ``yumen catalog show --json`` saved to a file.

Because the input is mock data, the algorithm's own stdout and stderr hold nothing
private, so unlike a department's ``yumen sandbox run`` this command shows them: a
traceback is what a developer needs most.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from yumen.catalog import DatasetRegistration
from yumen.cli._operator import _conn_args, _parse_param, client
from yumen.errors import Code, YumenError, exit_code
from yumen.sandbox import BACKENDS

__all__ = ["register"]

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 30
# yumen.mock.MOCK_FORMATS, spelled out so that building the parser does not import polars
# and numpy (yumen.mock is imported by the handlers); a test keeps the two equal.
_FORMATS = ("parquet", "csv")


def _load_registration_files(paths: list[Path]) -> dict[str, DatasetRegistration]:
    """Registrations from JSON files: one object, a list, or ``{"datasets": [...]}``."""
    found: dict[str, DatasetRegistration] = {}
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise YumenError(Code.NOT_FOUND, f"--registration {path}: no such file") from None
        except OSError as e:
            raise YumenError(Code.INVALID_ARGUMENT, f"--registration {path}: {e.strerror}") from None
        except ValueError as e:
            raise YumenError(
                Code.INVALID_ARGUMENT,
                f"--registration {path} is not JSON: {e}",
                hint="save one with: yumen catalog show ID --json > FILE",
            ) from None
        items = data.get("datasets", [data]) if isinstance(data, dict) else data
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise YumenError(
                Code.INVALID_ARGUMENT,
                f"--registration {path} holds neither a registration object nor a list of them",
                hint="save one with: yumen catalog show ID --json > FILE",
            )
        for item in items:
            try:
                reg = DatasetRegistration.from_dict(item)
            except (TypeError, ValueError) as e:
                raise YumenError(
                    Code.INVALID_ARGUMENT, f"--registration {path}: a field has the wrong type ({e})"
                ) from None
            if reg.id in found:
                raise YumenError(
                    Code.INVALID_ARGUMENT, f"dataset {reg.id!r} is registered twice in the --registration files"
                )
            found[reg.id] = reg
    return found


def _registrations(args: argparse.Namespace, wanted: list[str]) -> list[DatasetRegistration]:
    """The registrations of ``wanted`` datasets, in order: from files if given, else the broker.

    With ``--registration`` and no ``--dataset``, every registration in the files is used.
    """
    wanted = list(dict.fromkeys(wanted))
    if args.registration:
        available = _load_registration_files(args.registration)
        if not available:
            raise YumenError(Code.INVALID_ARGUMENT, "the --registration files register no dataset")
        if not wanted:
            return list(available.values())
        missing = [d for d in wanted if d not in available]
        if missing:
            raise YumenError(
                Code.NOT_FOUND,
                f"no registration for {', '.join(missing)} in the --registration files",
                hint=f"the files register: {', '.join(available) or 'nothing'}",
            )
        return [available[d] for d in wanted]
    if not wanted:
        raise YumenError(
            Code.INVALID_ARGUMENT,
            "no --dataset given",
            hint="name the dataset with --dataset ID, or read its registration with --registration FILE",
        )
    with client(args) as c:
        return [c.dataset(d)[0] for d in wanted]


def _tail(data: bytes) -> str:
    lines = data.decode("utf-8", errors="replace").rstrip().splitlines()
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def _run(args: argparse.Namespace) -> int:
    from yumen.mock import write_mock
    from yumen.sandbox import SandboxRequest, get_backend

    try:
        algorithm = Path(args.algorithm).read_bytes()
    except OSError as e:
        raise YumenError(Code.NOT_FOUND, f"cannot read the algorithm {args.algorithm}: {e.strerror}") from None
    registrations = _registrations(args, args.dataset or [])
    params = dict(_parse_param(p) for p in args.param or ())
    with tempfile.TemporaryDirectory(prefix="yumen-dev-") as tmp:
        inputs = {
            reg.id: write_mock(reg, Path(tmp) / f"{reg.id}.parquet", rows=args.rows, seed=args.seed)
            for reg in registrations
        }
        request = SandboxRequest(
            algorithm=algorithm, inputs=inputs, params=params, timeout_s=args.timeout, memory_mb=args.memory,
        )
        log.info("dev run of %s on mocks of %s (%d rows, seed %d)",
                 args.algorithm, ", ".join(inputs), args.rows, args.seed)
        report = get_backend(args.backend, runtime_dir=args.runtime_dir).run(request)
    if args.show_logs:
        sys.stderr.write((report.stdout + report.stderr).decode("utf-8", errors="replace"))
    mock = {"datasets": list(inputs), "rows": args.rows, "seed": args.seed}
    if args.json:
        print(json.dumps({**report.to_json(), "mock": mock}, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        _print_summary(args, report, mock)
    return 0 if report.ok else exit_code(Code.JOB_FAILED)


def _print_summary(args: argparse.Namespace, report: Any, mock: dict[str, Any]) -> None:
    u = report.usage
    print(f"{report.status.value}: {args.algorithm} on mock {', '.join(mock['datasets'])} "
          f"({mock['rows']} rows, seed {mock['seed']}), {report.backend} sandbox, "
          f"{u.wall_ms} ms wall, {u.cpu_ms} ms CPU, {u.max_rss_kb // 1024} MB peak")
    if report.ok:
        for name, value in sorted(report.result.items()):
            print(f"  {name:<32} {value:>16.6g}")
        print("mock data only: these numbers say nothing about the real dataset; no budget was spent")
        return
    print(f"  {report.error}")
    if not args.show_logs and report.stderr:
        print("algorithm stderr (last lines):", file=sys.stderr)
        print(_tail(report.stderr), file=sys.stderr)


def _mock(args: argparse.Namespace) -> int:
    from yumen.mock import write_mock

    found = _registrations(args, [args.dataset] if args.dataset else [])
    if len(found) != 1:
        raise YumenError(
            Code.INVALID_ARGUMENT,
            f"the --registration files register {len(found)} datasets: {', '.join(r.id for r in found)}",
            hint="choose one with --dataset ID",
        )
    (reg,) = found
    out = Path(args.out)
    fmt = args.format or ("csv" if out.suffix.lower() == ".csv" else "parquet")
    write_mock(reg, out, rows=args.rows, seed=args.seed, format=fmt)
    info = {"dataset": reg.id, "path": str(out), "format": fmt, "rows": args.rows, "seed": args.seed}
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        print(f"mock of {reg.id}: {args.rows} rows (seed {args.seed}) written to {out} as {fmt}")
    return 0


def _mock_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registration", action="append", type=Path, metavar="FILE.json",
                   help="read registrations from this file instead of the broker (repeatable; for offline use)")
    p.add_argument("--rows", type=int, default=1000, help="rows of each mock, 1 to 10,000,000 (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="picks one of many mocks of the same schema (default 0)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    _conn_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dev run`` and ``dev mock`` to the ``yumen`` parser."""
    dev = sub.add_parser("dev", help="develop algorithms on mock data before spending budget")
    dsub = dev.add_subparsers(dest="dev_command", metavar="ACTION", required=True)

    run = dsub.add_parser("run", help="run an algorithm in the sandbox against mocks of datasets")
    run.add_argument("algorithm", metavar="ALGO.py", help="the algorithm file (writes /data/output/result.json)")
    run.add_argument("--dataset", action="append", metavar="ID",
                     help="dataset id; its mock appears at /data/input/ID.parquet (repeatable)")
    run.add_argument("--param", action="append", metavar="K=V",
                     help="parameter; V is parsed as JSON when it parses, else kept as a string (repeatable)")
    run.add_argument("--timeout", type=float, default=60.0, metavar="S", help="wall-time limit in seconds (default 60)")
    run.add_argument("--memory", type=int, default=512, metavar="MB", help="memory limit in MB (default 512)")
    run.add_argument("--backend", choices=BACKENDS, default="bwrap", help="sandbox backend (default bwrap)")
    run.add_argument("--runtime-dir", type=Path, default=None, metavar="DIR",
                     help="sandbox runtime directory (env YUMEN_RUNTIME_DIR)")
    run.add_argument("--show-logs", action="store_true", help="copy the algorithm's stdout and stderr to stderr")
    _mock_args(run)
    run.set_defaults(func=_run)

    mock = dsub.add_parser("mock", help="write a dataset's mock to a file")
    mock.add_argument("--dataset", metavar="ID", help="dataset id")
    mock.add_argument("--out", required=True, metavar="FILE", help="where to write the mock")
    mock.add_argument("--format", choices=_FORMATS, help="parquet or csv (default: from --out, else parquet)")
    _mock_args(mock)
    mock.set_defaults(func=_mock)
