"""gRPC plumbing shared by every service and client: mTLS, identity, error mapping.

Every channel is mutual TLS against the data space CA. Servers require a client
certificate; the caller's identity is read from the verified peer certificate and
nothing else. One decorator, :func:`rpc_method`, maps :class:`YumenError` to the gRPC
status in :data:`yumen.errors.ERROR_TABLE`; anything unexpected becomes INTERNAL with
a sanitized message while the details go to the server's log.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import grpc

from yumen.errors import MAX_MESSAGE_CHARS, Code, YumenError, grpc_status
from yumen.identity import Identity, Role, identity_from_pem

__all__ = [
    "TlsFiles",
    "MAX_MESSAGE_BYTES",
    "server_credentials",
    "secure_channel",
    "caller",
    "require_role",
    "rpc_method",
    "rpc_stream",
    "call",
    "abort",
    "error_of",
]

log = logging.getLogger(__name__)

# Large enough for an HE public context without Galois keys and a few CKKS vectors.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True, kw_only=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        out = []
        for label, p in (("CA certificate", self.ca), ("certificate", self.cert), ("private key", self.key)):
            try:
                out.append(Path(p).read_bytes())
            except OSError as e:
                raise YumenError(
                    Code.CONFIG,
                    f"cannot read the {label} {p}: {e.strerror}",
                    hint="issue certificates with `yumen pki issue` and point the config at them",
                ) from None
        return out[0], out[1], out[2]


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    ca, cert, key = tls.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def secure_channel(target: str, tls: TlsFiles, *, server_name: str = "") -> grpc.Channel:
    ca, cert, key = tls.read()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))  # type: ignore[arg-type]  # gRPC options take str or int values
    return grpc.secure_channel(target, creds, options=options)


def caller(context: grpc.ServicerContext) -> Identity:
    """The verified identity of the peer, from its client certificate alone."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    if not pems:
        raise YumenError(Code.UNAUTHENTICATED, "no client certificate presented")
    return identity_from_pem(pems[0])


def require_role(identity: Identity, *roles: Role) -> None:
    if identity.role not in roles:
        wanted = " or ".join(r.value for r in roles)
        raise YumenError(
            Code.PERMISSION_DENIED,
            f"this call is for {wanted} certificates; you called as {identity.role.value} {identity.name!r}",
        )


def abort(context: grpc.ServicerContext, err: YumenError) -> None:
    """End the call with ``err``: its status and message, and its code and hint as trailing
    metadata so the client rebuilds exactly this error (:meth:`YumenError.from_status`)."""
    message = err.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + f"… (message cut at {MAX_MESSAGE_CHARS} characters)"
    context.set_trailing_metadata(err.metadata())
    context.abort(grpc_status(err.code), message)


def _internal(context: grpc.ServicerContext) -> None:
    abort(context, YumenError(Code.INTERNAL, "internal error; the broker's log has the details"))


def error_of(e: grpc.RpcError) -> YumenError:
    """The :class:`YumenError` a failed call carries (see :func:`abort`)."""
    status = e.code()
    metadata = e.trailing_metadata() if hasattr(e, "trailing_metadata") else ()
    err = YumenError.from_status(status, e.details() or "", metadata)
    if err.code is Code.UNAVAILABLE and not err.hint:
        err.hint = "is the broker running, and are --broker and the certificates right?"
    return err


def rpc_method(fn: F) -> F:
    """Map errors of a unary servicer method to statuses (see module docstring)."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except YumenError as e:
            abort(context, e)
        except Exception as e:  # noqa: BLE001 - everything else is a bug
            if isinstance(e, grpc.RpcError) or type(e).__name__ == "_AbortError":
                raise
            log.exception("internal error in %s", fn.__qualname__)
            _internal(context)

    return wrapper  # type: ignore[return-value]


def rpc_stream(fn: F) -> F:
    """Like :func:`rpc_method` for server-streaming methods (generators)."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterable[Any]:
        try:
            yield from fn(self, request, context)
        except YumenError as e:
            abort(context, e)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, grpc.RpcError) or type(e).__name__ == "_AbortError":
                raise
            log.exception("internal error in %s", fn.__qualname__)
            _internal(context)

    return wrapper  # type: ignore[return-value]


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a client stub call and turn a gRPC error into a :class:`YumenError`."""
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        raise error_of(e) from None
