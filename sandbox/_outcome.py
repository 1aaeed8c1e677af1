"""Turning what a sandbox left behind into one :class:`SandboxReport`, the same way for every backend.

Inputs are the launcher's bundle (untrusted JSON the host reads with a cap) and what only
the host knows: whether it hit the wall-clock deadline, and whether the kernel killed the
job for memory. The order of the checks is the contract documented in docs/sandbox.md:
timeout, memory, killed by a signal, output too large, non-zero exit, invalid output, ok.
"""

from __future__ import annotations

import base64
import binascii
import json
import signal
from dataclasses import dataclass
from typing import Any

from ._types import InvalidResult, SandboxReport, SandboxRequest, Status, Usage, parse_result

__all__ = ["HostFacts", "parse_bundle", "classify"]

# Allocation failures that do not raise MemoryError: Rust's alloc error handler (polars)
# and C++ std::bad_alloc (pyarrow) abort the process.
_ALLOC_FAILURE_MARKERS = (b"memory allocation of", b"std::bad_alloc", b"Cannot allocate memory")


@dataclass(frozen=True, kw_only=True)
class HostFacts:
    """What the host observed about one execution, independent of the sandbox's word."""

    backend: str
    runtime_digest: str
    wall_ms: int
    timed_out: bool = False
    oom_killed: bool = False
    cpu_ms: int | None = None
    max_rss_kb: int | None = None
    runner_stderr: bytes = b""


def parse_bundle(stdout: bytes) -> dict[str, Any] | None:
    """The launcher's JSON line is the last non-empty line of its stdout; None if absent or garbled."""
    for line in reversed(stdout.splitlines()):
        if not line.strip():
            continue
        try:
            bundle = json.loads(line)
        except (ValueError, RecursionError):
            return None
        return bundle if isinstance(bundle, dict) and bundle.get("v") == 1 else None
    return None


def _b64(bundle: dict[str, Any], key: str, cap: int) -> bytes:
    value = bundle.get(key)
    if not isinstance(value, str):
        return b""
    try:
        return base64.b64decode(value, validate=True)[:cap]
    except (binascii.Error, ValueError):
        return b""


def _int(bundle: dict[str, Any], key: str) -> int:
    value = bundle.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(request: SandboxRequest, facts: HostFacts, bundle: dict[str, Any] | None) -> SandboxReport:
    """Apply the status rules; never raises for anything the algorithm can influence."""
    bundle = bundle or {}
    stdout = _b64(bundle, "stdout_b64", request.log_limit_bytes)
    stderr = _b64(bundle, "stderr_b64", request.log_limit_bytes)
    raw_result = _b64(bundle, "result_b64", request.output_limit_bytes + 1)
    result_size = max(_int(bundle, "result_size"), len(raw_result))
    usage = Usage(
        wall_ms=facts.wall_ms,
        # The host's numbers cannot be forged but miss processes no ancestor waited for;
        # the launcher's cover the algorithm's tree. Metering takes the larger of the two.
        cpu_ms=max(facts.cpu_ms or 0, _int(bundle, "cpu_ms")),
        max_rss_kb=max(facts.max_rss_kb or 0, _int(bundle, "max_rss_kb")),
        stdout_bytes=_int(bundle, "stdout_bytes"),
        stderr_bytes=_int(bundle, "stderr_bytes"),
        result_bytes=result_size,
    )
    exit_code = bundle.get("exit") if isinstance(bundle.get("exit"), int) else None
    sig = bundle.get("signal") if isinstance(bundle.get("signal"), int) else None

    def report(status: Status, error: str, result: dict[str, float] | None = None) -> SandboxReport:
        return SandboxReport(
            status=status,
            result=result,
            usage=usage,
            error=error,
            stdout=stdout,
            stderr=stderr,
            backend=facts.backend,
            runtime_digest=facts.runtime_digest,
            exit_code=exit_code,
        )

    if facts.timed_out:
        return report(Status.TIMEOUT, f"the algorithm exceeded its time limit of {request.timeout_s:g} s")
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and usage.cpu_ms >= request.cpu_limit_s * 1000):
        return report(Status.TIMEOUT, f"the algorithm exceeded its CPU time limit of {request.cpu_limit_s} s")
    ends = stderr + b"\n" + _b64(bundle, "stderr_tail_b64", 512)
    allocation_failed = sig == signal.SIGABRT and any(m in ends for m in _ALLOC_FAILURE_MARKERS)
    if facts.oom_killed or bundle.get("memory") is True or allocation_failed:
        return report(Status.MEMORY, f"the algorithm exceeded its memory limit of {request.memory_mb} MiB")
    if not bundle:
        return report(Status.KILLED, "the sandbox ended without a report: the job's processes were killed")
    if sig is not None:
        if sig == signal.SIGXFSZ:
            return report(Status.ERROR, f"the algorithm wrote a file larger than the scratch limit of {request.scratch_mb} MiB")
        return report(Status.KILLED, f"the algorithm was killed by {_signal_name(sig)}")
    if result_size > request.output_limit_bytes:
        return report(
            Status.OUTPUT_TOO_LARGE,
            f"result.json is larger than the limit of {request.output_limit_bytes} bytes",
        )
    if exit_code != 0:
        return report(Status.ERROR, f"the algorithm exited with code {exit_code}")
    problem = bundle.get("result_error")
    if problem is not None:
        reasons = {
            "missing": "the algorithm wrote no /data/output/result.json",
            "symlink": "result.json is a symbolic link",
            "hardlink": "result.json is a hard link",
            "not-regular": "result.json is not a regular file",
        }
        return report(Status.INVALID_OUTPUT, reasons.get(str(problem), "result.json could not be read"))
    try:
        result = parse_result(raw_result, max_keys=request.max_result_keys)
    except InvalidResult as e:
        return report(Status.INVALID_OUTPUT, f"result.json is not a JSON object of named finite numbers: {e}")
    return report(Status.OK, "", result)
