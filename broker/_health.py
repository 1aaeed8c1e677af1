"""The standard gRPC health service (``grpc.health.v1.Health``), written so that it cannot freeze
the server.

Why not ``grpc_health.v1.health.HealthServicer`` (grpcio-health-checking 1.76): its
non-blocking ``Watch`` holds the servicer's lock while it sends the first response and
registers an RPC-termination callback, and that callback takes the same lock on gRPC's event
thread. When a watcher's deadline ends while another ``Watch`` is starting, the event thread
waits for the lock and the lock's holder waits for the event thread: about twenty
concurrent watches with 0.2 s deadlines were enough to stop the broker answering anything,
for good.

Here nothing holds a lock while it calls into gRPC, and no callback takes one: ``Check``
reads a status under a lock held for a dictionary lookup, and ``Watch`` is an ordinary
response stream that re-reads the status when it changes (or every ``poll_s``) and ends as
soon as its call is no longer active. Each watch holds a worker thread while it lasts, so
the broker's :class:`~yumen.broker._guard.Guard` limits watches per certificate and streams
in total.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["HealthServicer"]

_Status = health_pb2.HealthCheckResponse


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, *, poll_s: float = 1.0) -> None:
        self._poll_s = poll_s
        self._changed = threading.Condition()
        self._status: dict[str, int] = {"": _Status.NOT_SERVING}
        self._shutting_down = False

    def set(self, service: str, status: int) -> None:
        with self._changed:
            if self._shutting_down:
                return
            self._status[service] = status
            self._changed.notify_all()

    def serving(self) -> bool:
        """Whether the server as a whole reports SERVING (the kubelet's readiness, yumen.health)."""
        with self._changed:
            return self._status.get("") == _Status.SERVING and not self._shutting_down

    def enter_graceful_shutdown(self) -> None:
        """Every service reports NOT_SERVING from now on, and watches end."""
        with self._changed:
            self._shutting_down = True
            for service in self._status:
                self._status[service] = _Status.NOT_SERVING
            self._changed.notify_all()

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> _Status:  # noqa: N802
        with self._changed:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service[:80]!r} is known to the health service")
        return _Status(status=status)

    def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> Iterator[_Status]:  # noqa: N802
        last = None
        while context.is_active():
            with self._changed:
                status = self._status.get(request.service, _Status.SERVICE_UNKNOWN)
                ending = self._shutting_down
                if status == last and not ending:
                    self._changed.wait(self._poll_s)
                    continue
            last = status
            yield _Status(status=status)  # outside the lock: sending may wait for gRPC
            if ending:
                return
