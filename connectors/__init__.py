"""Connectors: run at a department, next to its data; register datasets, execute tickets."""

from yumen.connectors._agent import ConnectorAgent
from yumen.connectors._config import ConnectorConfig, DatasetConfig, LocalPolicy, load_connector_config
from yumen.connectors._executor import Executor
from yumen.connectors._sources import DataSource, SourceSpec, infer_schema, open_source, validate_against

__all__ = [
    "ConnectorAgent",
    "ConnectorConfig",
    "DataSource",
    "DatasetConfig",
    "Executor",
    "LocalPolicy",
    "SourceSpec",
    "infer_schema",
    "load_connector_config",
    "open_source",
    "validate_against",
]
