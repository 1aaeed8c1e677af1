"""One root exception for all of Yumen, with a code enum grouped by component.

Every error a user can cause carries a message that says what was wrong and what to
do. ``ERROR_TABLE`` maps each code to the gRPC status the RPC layer returns and to
the CLI exit code; the broker's interceptor and the CLI's top-level catch both read
it, so no call site picks a status by hand.
"""

from __future__ import annotations

import enum

import grpc

__all__ = ["Code", "YumenError", "ERROR_TABLE", "grpc_status", "exit_code"]


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
}

_BY_STATUS = {}
for _code, (_status, _exit) in ERROR_TABLE.items():
    _BY_STATUS.setdefault(_status, _code)


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
    def from_status(cls, status: grpc.StatusCode, details: str) -> "YumenError":
        """Rebuild an error on the client side from a gRPC status and its details."""
        code = _BY_STATUS.get(status, Code.INTERNAL)
        if status == grpc.StatusCode.UNAVAILABLE:
            code = Code.UNAVAILABLE
        return cls(code, details or status.name.lower())


def grpc_status(code: Code) -> grpc.StatusCode:
    return ERROR_TABLE[code][0]


def exit_code(code: Code) -> int:
    return ERROR_TABLE[code][1]
