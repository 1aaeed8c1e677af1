"""The ``yumen`` command: one program fronting every component.

Each component contributes its subcommands through a ``register(subparsers)`` function in
its own ``_cli`` module; this module only wires them together and owns the single
top-level catch that turns a :class:`~yumen.errors.YumenError` into a message, a hint and
a documented exit code (see docs/cli.md).
"""

from __future__ import annotations

import argparse
import importlib
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("YUMEN_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
        return int(rc or 0)
    except YumenError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return exit_code(e.code)
    except grpc.RpcError as e:  # a call the client helpers did not translate
        from yumen.rpc import error_of

        err = error_of(e)
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return exit_code(err.code)
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - last line of defence: a bug, reported as such
        logging.getLogger(__name__).exception("internal error")
        print("error: internal error (set YUMEN_LOG_LEVEL=DEBUG for details)", file=sys.stderr)
        return exit_code(Code.INTERNAL)


def run() -> None:
    sys.exit(main())
