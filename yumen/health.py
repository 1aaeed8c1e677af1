"""A plaintext HTTP health endpoint for an orchestrator's probes (``/healthz``, ``/readyz``).

The broker's gRPC health service sits behind mutual TLS like every other service, and a
kubelet has no client certificate of the data space, so it cannot ask it. This endpoint
answers the kubelet instead, on a separate port:

* ``GET /healthz`` -- 200 ``ok`` while the process runs (liveness).
* ``GET /readyz`` -- 200 ``ready`` when the component's own readiness check passes, else
  503 ``not ready`` (readiness: a broker whose gRPC server serves, a connector whose stream
  to the broker is up).

What it tells is deliberately nothing beyond those two bits: no version, no ids, no counts,
no error text (the component's log has the details). Anything else is 404; methods other
than GET and HEAD are 405. Bodies are fixed strings, so a reader learns only "alive" and
"ready". Bind it to the pod's own address (``$(POD_IP):8080``) or to loopback, never to a
public interface: it is unauthenticated by design, which is only acceptable because it
says so little.

Why plain HTTP and not a second, plaintext gRPC health server: kubelet's HTTP probe needs
no extra binary or port protocol, and a second gRPC server would be one more listener that
speaks the broker's wire protocol without TLS. Why the standard library's server: it is two
routes and one thread per probe; a framework would add dependencies and surface.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from yumen.errors import Code, YumenError

__all__ = ["HealthEndpoint", "parse_listen"]

log = logging.getLogger(__name__)

_BODIES = {
    "/healthz": (200, b"ok\n"),
}


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:8080``) into (host, port); raises CONFIG when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise YumenError(Code.CONFIG, f"health listen address {listen!r} is not HOST:PORT",
                         hint='write it like "0.0.0.0:8080" or "127.0.0.1:8080"')
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class HealthEndpoint:
    """Serve ``/healthz`` and ``/readyz`` on ``listen`` in a daemon thread.

    ``ready`` is called on every ``/readyz`` request; it must be cheap and must not raise
    (an exception counts as not ready and is logged, never sent).
    """

    def __init__(self, listen: str, ready: Callable[[], bool]) -> None:
        self._host, self._port = parse_listen(listen)
        self._ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise YumenError(Code.INTERNAL, "the health endpoint is not started")
        return int(self._server.server_address[1])

    def _is_ready(self) -> bool:
        try:
            return bool(self._ready())
        except Exception:  # noqa: BLE001 - a failing check is "not ready", never an error page
            log.exception("readiness check failed")
            return False

    def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "yumen"
            sys_version = ""

            def _answer(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/readyz":
                    status, text = (200, b"ready\n") if endpoint._is_ready() else (503, b"not ready\n")
                else:
                    status, text = _BODIES.get(path, (404, b"not found\n"))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(text)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if body:
                    self.wfile.write(text)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(body=False)

            def _refuse(self) -> None:
                self.send_response(405)
                self.send_header("Allow", "GET, HEAD")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return None  # probes every few seconds would flood the component's log

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        try:
            self._server = Server((self._host, self._port), Handler)
        except OSError as e:
            raise YumenError(Code.CONFIG, f"cannot serve health probes on {self._host}:{self._port}: {e.strerror}",
                             hint="choose a free HOST:PORT for the health endpoint") from None
        self._server.timeout = 5
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)
        self._thread.start()
        log.info("health probes on http://%s:%d/healthz and /readyz", self._host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
