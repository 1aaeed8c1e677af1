"""``yumen broker serve --config FILE``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from yumen.broker._config import load_broker_config
    from yumen.broker._server import BrokerServer

    BrokerServer(load_broker_config(Path(args.config))).serve_forever()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="run the broker (the data space's front door)")
    bsub = p.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    serve = bsub.add_parser("serve", help="serve the catalog, jobs and connector streams over mTLS gRPC")
    serve.add_argument("--config", required=True, help="broker TOML config")
    serve.set_defaults(func=_serve)
