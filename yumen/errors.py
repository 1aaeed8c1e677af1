"""One root exception for all of Yumen, with a code enum grouped by component.

Every error a user can cause carries a message that says what was wrong and what to
do. ``ERROR_TABLE`` maps each code to the gRPC status the RPC layer returns and to
the CLI exit code; the broker's interceptor and the CLI's top-level catch both read
it, so no call site picks a status by hand.
"""

from __future__ import annotations

from collections.abc import Iterable

import enum

import grpc

__all__ = ["Code", "YumenError", "ERROR_TABLE", "CODE_KEY", "HINT_KEY", "grpc_status", "exit_code", "echo"]


class Code(enum.Enum):
    # generic
    INVALID_ARGUMENT = "invalid-argument"
    NOT_FOUND = "not-found"
    ALREADY_EXISTS = "already-exists"
    INTERNAL = "internal"
    CONFIG = "config"
    UNAVAILABLE = "unavailable"
    # identity
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission-denied"
    # policy and budget
    POLICY_DENIED = "policy-denied"
    BUDGET_EXHAUSTED = "budget-exhausted"
    DEPARTMENT_REFUSED = "department-refused"
    # jobs
    JOB_FAILED = "job-failed"
    JOB_NOT_READY = "job-not-ready"
    # sandbox
    SANDBOX = "sandbox"
    SANDBOX_UNAVAILABLE = "sandbox-unavailable"
    # audit
    VERIFICATION_FAILED = "verification-failed"
    # concurrency and limits
    CONFLICT = "conflict"              # a compare-and-set lost: the state changed since the caller read it
    TOO_LARGE = "too-large"            # a request over the size limit of its method
    LIMIT_EXCEEDED = "limit-exceeded"  # too many concurrent calls, streams or queued jobs: retry later


# code -> (gRPC status, CLI exit code)
ERROR_TABLE: dict[Code, tuple[grpc.StatusCode, int]] = {
    Code.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, 2),
    Code.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, 3),
    Code.ALREADY_EXISTS: (grpc.StatusCode.ALREADY_EXISTS, 2),
    Code.INTERNAL: (grpc.StatusCode.INTERNAL, 1),
    Code.CONFIG: (grpc.StatusCode.FAILED_PRECONDITION, 2),
    Code.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, 6),
    Code.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, 4),
    Code.PERMISSION_DENIED: (grpc.StatusCode.PERMISSION_DENIED, 4),
    Code.POLICY_DENIED: (grpc.StatusCode.PERMISSION_DENIED, 4),
    Code.BUDGET_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED, 5),
    Code.DEPARTMENT_REFUSED: (grpc.StatusCode.PERMISSION_DENIED, 4),
    Code.JOB_FAILED: (grpc.StatusCode.ABORTED, 7),
    Code.JOB_NOT_READY: (grpc.StatusCode.FAILED_PRECONDITION, 7),
    Code.SANDBOX: (grpc.StatusCode.ABORTED, 7),
    Code.SANDBOX_UNAVAILABLE: (grpc.StatusCode.FAILED_PRECONDITION, 8),
    Code.VERIFICATION_FAILED: (grpc.StatusCode.DATA_LOSS, 9),
    Code.CONFLICT: (grpc.StatusCode.ABORTED, 2),
    Code.TOO_LARGE: (grpc.StatusCode.RESOURCE_EXHAUSTED, 2),
    Code.LIMIT_EXCEEDED: (grpc.StatusCode.RESOURCE_EXHAUSTED, 6),
}

# Several codes share a gRPC status (PERMISSION_DENIED: not permitted, denied by policy,
# refused by the department; FAILED_PRECONDITION: configuration, job not ready, sandbox
# unavailable; ...), so the status alone cannot say which: Yumen's servers send the code
# and the hint as trailing metadata, and clients rebuild the exact error from it. A status
# without that metadata (from gRPC itself, e.g. a message over gRPC's size limit, or a
# deadline) falls back to this table.
CODE_KEY = "yumen-code"
HINT_KEY = "yumen-hint-bin"  # "-bin": gRPC carries it as bytes, so a hint may be any UTF-8 text
_BY_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: Code.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: Code.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: Code.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION: Code.CONFIG,
    grpc.StatusCode.UNAVAILABLE: Code.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Code.UNAVAILABLE,
    grpc.StatusCode.CANCELLED: Code.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: Code.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: Code.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Code.LIMIT_EXCEEDED,
    grpc.StatusCode.ABORTED: Code.JOB_FAILED,
    grpc.StatusCode.DATA_LOSS: Code.VERIFICATION_FAILED,
}

#: The most characters of caller input an error message repeats (see :func:`echo`).
ECHO_LIMIT = 80
#: The longest message a status carries; a longer one is cut (it can only be echoed input).
MAX_MESSAGE_CHARS = 2000


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """Caller input quoted for an error message, cut at ``limit`` characters: an error must
    say what was wrong without repeating megabytes of it back."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"… ({len(text)} characters)"


class YumenError(Exception):
    """The root of every error Yumen raises on purpose.

    ``message`` is safe to show to the caller; ``hint`` says what to do about it.
    """

    def __init__(self, code: Code, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    @classmethod
    def from_status(cls, status: grpc.StatusCode, details: str,
                    metadata: "Iterable[tuple[str, str | bytes]] | None" = ()) -> "YumenError":
        """Rebuild an error on the client side from a gRPC status, its details and its
        trailing metadata (see ``CODE_KEY``): exactly the code and hint the server raised."""
        pairs: dict[str, str | bytes] = {}
        for item in metadata or ():
            key, value = item[0], item[1]
            pairs[key] = value
        hint = pairs.get(HINT_KEY, b"")
        hint = hint.decode("utf-8", "replace") if isinstance(hint, bytes) else str(hint)
        try:
            code = Code(pairs[CODE_KEY])
        except (KeyError, ValueError):
            code = _BY_STATUS.get(status, Code.INTERNAL)
            if status == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or ""):
                code = Code.TOO_LARGE  # gRPC's own message size limit
        else:
            if ERROR_TABLE[code][0] != status:  # a metadata code that contradicts the status is not trusted
                code = _BY_STATUS.get(status, Code.INTERNAL)
        return cls(code, details or status.name.lower(), hint=hint)

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The trailing metadata a server sends with this error."""
        out: tuple[tuple[str, str | bytes], ...] = ((CODE_KEY, self.code.value),)
        if self.hint:
            out += ((HINT_KEY, self.hint[:MAX_MESSAGE_CHARS].encode("utf-8", "replace")),)
        return out


def grpc_status(code: Code) -> grpc.StatusCode:
    return ERROR_TABLE[code][0]


def exit_code(code: Code) -> int:
    return ERROR_TABLE[code][1]
