"""The records every sandbox backend shares: what to run, how it ended, what it cost.

A :class:`SandboxRequest` is validated when it is built, so a backend never has to guess
whether a limit is sane. A :class:`SandboxReport` separates what is safe to send to the
operator (``to_json``: status, result, usage, a short error we wrote ourselves) from what
only the department may read (the algorithm's captured stdout and stderr).
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from yumen.errors import Code, YumenError

__all__ = [
    "DATASET_ID_PATTERN",
    "SandboxRequest",
    "Status",
    "Usage",
    "SandboxReport",
    "SandboxBackend",
    "parse_result",
]

# A dataset id becomes a file name inside the sandbox, so it must not contain a path
# separator or start with a dot (no "..", no hidden files).
DATASET_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

_MAX_ALGORITHM_BYTES = 1024 * 1024
_MAX_TIMEOUT_S = 24 * 3600.0


def _positive_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise YumenError(
            Code.INVALID_ARGUMENT,
            f"sandbox {name} must be an integer between {low} and {high}, got {value!r}",
            hint=f"choose a {name} in that range",
        )


@dataclass(frozen=True, kw_only=True)
class SandboxRequest:
    """One execution of buyer code, with every limit it runs under.

    The algorithm sees its inputs read-only at ``/data/input/<dataset>.parquet``, the
    parameters at ``/data/params.json``, and writes one JSON object of named numbers to
    ``/data/output/result.json``. Every limit has a default that is safe for a shared host.
    """

    algorithm: bytes
    inputs: Mapping[str, Path] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float = 60.0
    memory_mb: int = 512
    output_limit_bytes: int = 64 * 1024
    # CPU seconds over all the job's processes' lifetimes; None means "the wall timeout".
    cpu_time_s: float | None = None
    max_processes: int = 64
    scratch_mb: int = 64
    log_limit_bytes: int = 64 * 1024
    max_open_files: int = 256
    max_result_keys: int = 1024
    cpus: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.algorithm, (bytes, bytearray)):
            raise YumenError(Code.INVALID_ARGUMENT, "the algorithm must be Python source as bytes")
        if len(self.algorithm) > _MAX_ALGORITHM_BYTES:
            raise YumenError(
                Code.INVALID_ARGUMENT,
                f"the algorithm is {len(self.algorithm)} bytes; the limit is {_MAX_ALGORITHM_BYTES}",
                hint="ship data as inputs, not inside the source",
            )
        for dataset, path in self.inputs.items():
            if not isinstance(dataset, str) or not DATASET_ID_PATTERN.match(dataset):
                raise YumenError(
                    Code.INVALID_ARGUMENT,
                    f"dataset id {dataset!r} cannot name a file inside the sandbox",
                    hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
                )
            if not isinstance(path, Path):
                raise YumenError(Code.INVALID_ARGUMENT, f"input {dataset!r} must be a pathlib.Path")
        try:
            json.dumps(dict(self.params), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise YumenError(
                Code.INVALID_ARGUMENT,
                f"params must be JSON (no NaN or infinity): {e}",
                hint="pass strings, numbers, booleans, lists and objects only",
            ) from None
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s <= _MAX_TIMEOUT_S):
            raise YumenError(
                Code.INVALID_ARGUMENT,
                f"timeout_s must be in (0, {_MAX_TIMEOUT_S:.0f}], got {self.timeout_s!r}",
            )
        if self.cpu_time_s is not None and not (
            isinstance(self.cpu_time_s, (int, float)) and 0 < self.cpu_time_s <= _MAX_TIMEOUT_S
        ):
            raise YumenError(Code.INVALID_ARGUMENT, f"cpu_time_s must be positive, got {self.cpu_time_s!r}")
        _positive_int("memory_mb", self.memory_mb, 32, 1024 * 1024)
        _positive_int("output_limit_bytes", self.output_limit_bytes, 2, 64 * 1024 * 1024)
        _positive_int("max_processes", self.max_processes, 4, 65536)
        _positive_int("scratch_mb", self.scratch_mb, 1, 1024 * 1024)
        _positive_int("log_limit_bytes", self.log_limit_bytes, 0, 64 * 1024 * 1024)
        _positive_int("max_open_files", self.max_open_files, 16, 1024 * 1024)
        _positive_int("max_result_keys", self.max_result_keys, 1, 1024 * 1024)
        if not (isinstance(self.cpus, (int, float)) and 0.01 <= self.cpus <= 1024):
            raise YumenError(Code.INVALID_ARGUMENT, f"cpus must be in [0.01, 1024], got {self.cpus!r}")

    @property
    def cpu_limit_s(self) -> int:
        """Whole CPU seconds for RLIMIT_CPU: the explicit budget, else the wall timeout."""
        return max(1, math.ceil(self.cpu_time_s if self.cpu_time_s is not None else self.timeout_s))

    @property
    def params_json(self) -> bytes:
        return json.dumps(dict(self.params), sort_keys=True, allow_nan=False).encode()


class Status(enum.Enum):
    """How an execution ended. Only ``OK`` carries a result."""

    OK = "ok"
    ERROR = "error"  # the algorithm exited non-zero
    TIMEOUT = "timeout"  # wall-clock or CPU time limit
    MEMORY = "memory"  # memory limit (MemoryError, allocation failure, OOM kill)
    OUTPUT_TOO_LARGE = "output-too-large"
    INVALID_OUTPUT = "invalid-output"  # missing, not a regular file, or not an object of finite numbers
    KILLED = "killed"  # ended by a signal that no limit explains


@dataclass(frozen=True, kw_only=True)
class Usage:
    """What an execution cost, for metering and for the log."""

    wall_ms: int = 0
    cpu_ms: int = 0
    max_rss_kb: int = 0
    stdout_bytes: int = 0  # bytes the algorithm wrote, including those dropped by the cap
    stderr_bytes: int = 0
    result_bytes: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "wall_ms": self.wall_ms,
            "cpu_ms": self.cpu_ms,
            "max_rss_kb": self.max_rss_kb,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "result_bytes": self.result_bytes,
        }


@dataclass(frozen=True, kw_only=True)
class SandboxReport:
    """The outcome of one execution.

    ``error`` is written by Yumen, never copied from the algorithm, so it is safe to show
    the operator. ``stdout``/``stderr`` are the algorithm's own words, capped, and stay
    with the department: they may echo raw rows.
    """

    status: Status
    result: dict[str, float] | None
    usage: Usage
    error: str
    stdout: bytes = b""
    stderr: bytes = b""
    backend: str
    runtime_digest: str
    exit_code: int | None = None

    def __post_init__(self) -> None:
        if (self.status is Status.OK) != (self.result is not None):
            raise YumenError(Code.INTERNAL, "a sandbox report carries a result exactly when its status is ok")

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "result": self.result,
            "usage": self.usage.to_json(),
            "error": self.error,
            "exit_code": self.exit_code,
            "backend": self.backend,
            "runtime_digest": self.runtime_digest,
        }


@runtime_checkable
class SandboxBackend(Protocol):
    """An isolation mechanism that runs one :class:`SandboxRequest` at a time per call."""

    name: str

    def run(self, request: SandboxRequest) -> SandboxReport:
        """Run the algorithm under the request's limits; raise only for infrastructure faults."""
        ...

    def check(self) -> None:
        """Raise ``YumenError(Code.SANDBOX_UNAVAILABLE)`` naming what is missing and how to fix it."""
        ...


class InvalidResult(ValueError):
    """The result file is not a flat JSON object of finite numbers (message says why)."""


def _reject_constant(name: str) -> float:
    raise InvalidResult(f"{name} is not a finite number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidResult("a key appears twice")
        out[key] = value
    return out


def parse_result(raw: bytes, *, max_keys: int) -> dict[str, float]:
    """Parse ``result.json``: one flat object mapping names to finite numbers.

    Rejects NaN and infinity (also as overflowing literals like ``1e999``), booleans,
    strings, nesting, duplicate keys, empty or over-long names and more than ``max_keys``
    entries. Raises :class:`InvalidResult` with a reason that quotes neither a key nor a
    value (both are the algorithm's words and could carry raw data).
    """
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except InvalidResult:
        raise
    except RecursionError:
        raise InvalidResult("the JSON is nested too deeply") from None
    except (UnicodeDecodeError, ValueError):
        raise InvalidResult("the file is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise InvalidResult(f"the JSON is a {type(value).__name__}, not an object")
    if len(value) > max_keys:
        raise InvalidResult(f"the object has {len(value)} keys; the limit is {max_keys}")
    out: dict[str, float] = {}
    for key, number in value.items():
        if not key or len(key) > 256:
            raise InvalidResult("a key is empty or longer than 256 characters")
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise InvalidResult(f"a value is a {type(number).__name__}, not a number")
        try:
            as_float = float(number)
        except OverflowError:
            raise InvalidResult("a value is too large") from None
        if not math.isfinite(as_float):
            raise InvalidResult("a value is not finite")
        out[key] = as_float
    return out
