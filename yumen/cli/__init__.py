"""The ``yumen`` command: one program fronting every component.

Each component contributes its subcommands through a ``register(subparsers)`` function in
its own ``_cli`` module; this module only wires them together and owns the single
top-level catch that turns a :class:`~yumen.errors.YumenError` into a message, a hint and
a documented exit code (see docs/cli.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

import grpc

from yumen.errors import Code, YumenError, exit_code

__all__ = ["main"]

# Modules that contribute subcommands, in the order they appear in --help.
_COMMAND_MODULES = (
    "yumen.cli._pki",
    "yumen.broker._cli",
    "yumen.connectors._cli",
    "yumen.cli._operator",
    "yumen.cli._admin",
    "yumen.cli._dev",
    "yumen.sandbox._cli",
    "yumen.audit._cli",
    "yumen.cli._billing",
    "yumen.cli._demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yumen",
        description="Yumen: a privacy-preserving trusted data space for public data.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


# Exit code when stdout is a pipe the reader closed early (`yumen catalog show X | head`): the
# shell's own code for a process ended by SIGPIPE, and nothing on stderr, as for any Unix tool.
EXIT_BROKEN_PIPE = 141


def _report(args: argparse.Namespace | None, err: YumenError) -> int:
    """Print an error: ``error:``/``hint:`` lines on stderr, and with ``--json`` also one JSON
    object on stdout, so a script reading stdout always gets JSON. Returns the exit code."""
    code = exit_code(err.code)
    print(f"error: {err.message}", file=sys.stderr)
    if err.hint:
        print(f"hint: {err.hint}", file=sys.stderr)
    if args is not None and getattr(args, "json", False):
        print(json.dumps({"error": {"code": err.code.value, "message": err.message, "hint": err.hint or "",
                                    "exit_code": code}}, ensure_ascii=False))
    return code


def _quiet_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("YUMEN_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the catch, not at exit
        return int(rc or 0)
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except YumenError as e:
        return _report(args, e)
    except grpc.RpcError as e:  # a call the client helpers did not translate
        from yumen.rpc import error_of

        return _report(args, error_of(e))
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # a file named on the command line that cannot be read or written
        where = f" {e.filename}" if e.filename else ""
        return _report(args, YumenError(Code.CONFIG, f"cannot use{where}: {e.strerror or e}",
                                        hint="check the path and its permissions"))
    except Exception:  # noqa: BLE001 - last line of defence: a bug, reported as such, never as a traceback
        logging.getLogger(__name__).debug("internal error", exc_info=True)
        return _report(args, YumenError(Code.INTERNAL, "internal error (set YUMEN_LOG_LEVEL=DEBUG for details)"))


def run() -> None:
    sys.exit(main())
