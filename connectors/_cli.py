"""``yumen connector serve|check --config FILE``."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from yumen.connectors._agent import ConnectorAgent
    from yumen.connectors._config import load_connector_config

    agent = ConnectorAgent(load_connector_config(Path(args.config)))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: agent.stop())
    print(f"connector {agent.config.id} dialing broker {agent.config.broker}", flush=True)
    agent.run_forever()
    return 0


def _check(args: argparse.Namespace) -> int:
    from yumen.connectors._check import check_config

    return check_config(Path(args.config))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("connector", help="run a department's connector next to its data")
    csub = p.add_subparsers(dest="connector_command", metavar="ACTION", required=True)
    serve = csub.add_parser("serve", help="dial out to the broker and execute its tickets")
    serve.add_argument("--config", required=True, help="connector TOML config")
    serve.set_defaults(func=_serve)
    check = csub.add_parser("check", help="validate the config, certificates, sources and sandbox")
    check.add_argument("--config", required=True, help="connector TOML config")
    check.set_defaults(func=_check)
