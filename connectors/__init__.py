"""Connectors: run at a department, next to its data; register datasets, execute tickets."""

from yumen.connectors._agent import ConnectorAgent
from yumen.connectors._config import ConnectorConfig, DatasetConfig, LocalPolicy, load_connector_config
from yumen.connectors._executor import Executor
from yumen.connectors._demodata import DEMO_DATASETS, demo_frame, demo_registration, demo_registrations
from yumen.connectors._demodata import generate as generate_demo
from yumen.connectors._sources import (
    SOURCE_KINDS,
    DataSource,
    SourceSpec,
    frame_digest,
    infer_schema,
    open_source,
    validate_against,
)

__all__ = [
    "DEMO_DATASETS",
    "SOURCE_KINDS",
    "ConnectorAgent",
    "ConnectorConfig",
    "DataSource",
    "DatasetConfig",
    "Executor",
    "LocalPolicy",
    "SourceSpec",
    "demo_frame",
    "demo_registration",
    "demo_registrations",
    "frame_digest",
    "generate_demo",
    "infer_schema",
    "load_connector_config",
    "open_source",
    "validate_against",
]
