"""The plaintext probe endpoint: two fixed answers, nothing else."""

from __future__ import annotations

import http.client
import socket
import threading

import pytest

from yumen.errors import Code, YumenError
from yumen.health import HealthEndpoint, parse_listen


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


@pytest.fixture
def endpoint():
    ready = threading.Event()
    ep = HealthEndpoint("127.0.0.1:0", ready.is_set)
    port = ep.start()
    yield ep, port, ready
    ep.stop()


def test_liveness_is_ok_and_readiness_follows_the_check(endpoint):
    _, port, ready = endpoint
    assert _get(port, "/healthz")[:2] == (200, b"ok\n")
    assert _get(port, "/readyz")[:2] == (503, b"not ready\n")
    ready.set()
    assert _get(port, "/readyz")[:2] == (200, b"ready\n")
    assert _get(port, "/readyz?verbose=1")[:2] == (200, b"ready\n")
    ready.clear()
    assert _get(port, "/readyz")[0] == 503


def test_anything_else_is_refused_and_nothing_identifies_the_component(endpoint):
    _, port, _ = endpoint
    assert _get(port, "/metrics")[:2] == (404, b"not found\n")
    assert _get(port, "/")[0] == 404
    assert _get(port, "/healthz", "POST")[0] == 405
    status, body, headers = _get(port, "/healthz", "HEAD")
    assert status == 200 and body == b""
    assert headers["server"].strip() == "yumen"  # no Python or library version
    assert headers["cache-control"] == "no-store"


def test_a_readiness_check_that_raises_is_not_ready_and_its_text_is_not_sent():
    def broken() -> bool:
        raise RuntimeError("secret-detail")

    ep = HealthEndpoint("127.0.0.1:0", broken)
    port = ep.start()
    try:
        status, body, _ = _get(port, "/readyz")
        assert status == 503 and b"secret" not in body
    finally:
        ep.stop()


def test_a_bad_address_or_a_taken_port_is_a_config_error_saying_what_to_do():
    for bad in ("8080", "host:", "host:99999", "host:http"):
        with pytest.raises(YumenError) as e:
            parse_listen(bad)
        assert e.value.code is Code.CONFIG and "HOST:PORT" in e.value.message
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(YumenError) as e:
            HealthEndpoint(f"127.0.0.1:{port}", lambda: True).start()
        assert e.value.code is Code.CONFIG and "free HOST:PORT" in e.value.hint
