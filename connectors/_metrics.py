"""Prometheus metrics of a connector: jobs run, refused and failed, and time spent.

Served on ``[connector] metrics = "HOST:PORT"`` at ``/metrics`` (off when empty). The
registry is the connector's own, not the process-wide default, so several connectors in
one process (as in tests) never share counters. Labels carry dataset ids and outcomes
only, never values.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from yumen.errors import Code, YumenError

log = logging.getLogger(__name__)

__all__ = ["ConnectorMetrics"]


class ConnectorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter("yumen_connector_jobs", "Tickets handled, by dataset, tier and outcome",
                            ["dataset", "tier", "outcome"], registry=self.registry)
        self.seconds = Histogram("yumen_connector_job_seconds", "Time spent executing a ticket",
                                 ["dataset", "tier"], registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.connected = Gauge("yumen_connector_connected", "1 while the stream to the broker is up",
                               registry=self.registry)
        self.reconnects = Counter("yumen_connector_reconnects", "Times the stream to the broker was re-established",
                                  registry=self.registry)
        self.overruns = Counter("yumen_connector_deadline_overruns",
                                "Algorithm jobs that finished after their release deadline (raise [timing] allowance_s)",
                                registry=self.registry)
        self._server: Any = None

    def record(self, *, dataset: str, tier: str, outcome: str, seconds: float) -> None:
        self.jobs.labels(dataset=dataset, tier=tier, outcome=outcome).inc()
        self.seconds.labels(dataset=dataset, tier=tier).observe(seconds)

    def count(self, outcome: str) -> float:
        """Total tickets with ``outcome`` (ok, failed, refused), over every dataset and tier."""
        total = 0.0
        for metric in self.jobs.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels.get("outcome") == outcome:
                    total += sample.value
        return total

    def serve(self, listen: str) -> int:
        """Start the /metrics endpoint; returns the port (useful with port 0)."""
        host, _, port = listen.rpartition(":")
        try:
            self._server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        except (OSError, ValueError) as e:
            raise YumenError(Code.CONFIG, f"cannot serve metrics on {listen}: {e}", hint="set [connector] metrics to a free HOST:PORT") from None
        bound = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", bound)
        return bound
