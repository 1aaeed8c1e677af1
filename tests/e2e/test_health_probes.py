"""Kubelet-style probes of a real broker and connector over the plaintext health endpoint."""

from __future__ import annotations

import http.client
import time

import pytest

from yumen.localspace import Department, LocalSpace, free_port

pytestmark = [pytest.mark.e2e]


def _status(port: int, path: str) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None


def _wait(port: int, path: str, want: int, timeout: float = 60) -> int | None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = _status(port, path)
        if got == want:
            return got
        time.sleep(0.2)
    return got


def test_broker_and_connector_answer_probes_and_the_connector_is_ready_only_while_connected(tmp_path):
    broker_probe, connector_probe = free_port(), free_port()
    space = LocalSpace(tmp_path / "space",
                       departments=(Department(id="weather-bureau", datasets=(("weather-daily", 365),)),),
                       broker_settings=f'health = "127.0.0.1:{broker_probe}"')
    space.setup()
    conf = space.root / "weather-bureau.toml"
    conf.write_text(conf.read_text().replace("[connector]\n", f'[connector]\nhealth = "127.0.0.1:{connector_probe}"\n', 1))
    try:
        space.start(timeout=90)
        assert _wait(broker_probe, "/readyz", 200) == 200
        assert _status(broker_probe, "/healthz") == 200
        assert _wait(connector_probe, "/readyz", 200) == 200
        space.stop_process("broker")
        # the broker is gone: its probe port closes, and the connector reports not ready
        assert _wait(connector_probe, "/readyz", 503) == 503
        assert _status(connector_probe, "/healthz") == 200
        assert _status(broker_probe, "/healthz") is None
        space.start_broker()
        assert _wait(connector_probe, "/readyz", 200) == 200
    finally:
        space.stop()
