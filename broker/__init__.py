"""The broker: gRPC front door, policy decision point, budget ledger, result assembly, log."""

from yumen.broker._config import BrokerConfig, load_broker_config
from yumen.broker._core import Broker
from yumen.broker._server import BrokerServer, build_broker
from yumen.broker._store import SqliteStore, Store
from yumen.broker._store_postgres import PostgresStore

__all__ = [
    "Broker",
    "BrokerConfig",
    "BrokerServer",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "build_broker",
    "load_broker_config",
]
