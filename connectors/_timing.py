"""When an algorithm's result may leave the department: at a deadline fixed before it runs.

How long untrusted code runs is an output of that code on private data. An algorithm that
sleeps six seconds when a chosen person is in its block would otherwise tell the operator,
through the time its result arrives, one bit about that person per job, outside any ε. So
for the two algorithm tiers the connector fixes a release time before it touches data,
from the job's declared limits and the department's static settings only:

    approved algorithm:  allowance + timeout_s
    custom algorithm:    allowance + waves · wave_slack + timeout_s
                         (waves = ⌈blocks / parallel⌉; each block gets timeout_s / waves;
                          wave i starts at i · (timeout_s / waves + wave_slack) after the
                          first, whatever the blocks before it did: ``run_blocks``)

and holds the signed receipt (and the worker that ran the job) until then, whatever the
code did. The receipt's time is the release time; it meters no wall or CPU time. Holding
the worker matters as much as holding the receipt: if a job that finished early freed its
worker, the next job would start earlier, and its own deadline would carry the first job's
running time.

When a job overruns its deadline anyway (the machine was overloaded, or tearing a sandbox
down took long), the receipt leaves at the next whole quantum after the deadline (a quarter
of the job's duration, at least one second). That lateness is the residual channel: it is
visible only when the allowance was too small, and it carries at most log2 of the number
of quanta the job overran by. Every overrun is logged at the department with its size, so
a department can raise its allowance. docs/privacy.md states the bound.

Queries are not held: their running time depends on the size of the pinned data version
and on the query, and one person's k rows change it by far less than a microsecond of
vectorized work, below the jitter of any network between the connector and the operator.
"""

from __future__ import annotations

import dataclasses
import math
import os

from yumen.errors import Code, YumenError

__all__ = ["Schedule", "Timing", "schedule_for", "release_at"]

MIN_BLOCK_TIMEOUT_S = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class Timing:
    """The department's static timing settings (``[timing]`` in the connector config)."""

    allowance_s: float = 10.0  # per job: pinning the version, staging inputs, sandbox start-up, signing
    wave_slack_s: float = 0.5  # per wave of sample-and-aggregate blocks: sandbox start-up and teardown
    block_parallelism: int = 0  # sandboxes one custom-algorithm job runs at once (0: min(4, cores))

    def __post_init__(self) -> None:
        for name in ("allowance_s", "wave_slack_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 3600):
                raise YumenError(Code.CONFIG, f"[timing] {name} must be a number of seconds from 0 to 3600")
        if not 0 <= self.block_parallelism <= 64:
            raise YumenError(Code.CONFIG, "[timing] block_parallelism must be from 0 (automatic) to 64")

    @property
    def parallel(self) -> int:
        return self.block_parallelism or max(1, min(4, os.cpu_count() or 1))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schedule:
    """How long a job's results are held, and the time limit of each of its sandbox runs."""

    duration_s: float
    run_timeout_s: float
    waves: int = 1

    @property
    def quantum_s(self) -> float:
        return max(1.0, self.duration_s / 4)


def schedule_for(tier: str, *, timeout_s: float, blocks: int, timing: Timing) -> Schedule | None:
    """The release schedule of a job, from its limits only; ``None`` for queries (not held).

    Raises ``DEPARTMENT_REFUSED`` (before any data is touched) when the job's time limit is
    too short to give each of its blocks a useful share of it.
    """
    if tier == "query":
        return None
    if tier == "approved-algorithm":
        return Schedule(duration_s=timing.allowance_s + timeout_s, run_timeout_s=timeout_s)
    if tier != "custom-algorithm":
        raise YumenError(Code.INTERNAL, f"no release schedule for tier {tier!r}")
    waves = math.ceil(blocks / timing.parallel)
    per_block = timeout_s / waves
    if per_block < MIN_BLOCK_TIMEOUT_S:
        need = math.ceil(MIN_BLOCK_TIMEOUT_S * waves)
        raise YumenError(
            Code.DEPARTMENT_REFUSED,
            f"a time limit of {timeout_s:g} s is too short for {blocks} blocks here ({timing.parallel} at a time): "
            f"each block would get {per_block:.2f} s",
            hint=f"raise --timeout to at least {need} s, or ask for fewer --blocks",
        )
    return Schedule(duration_s=timing.allowance_s + waves * timing.wave_slack_s + timeout_s,
                    run_timeout_s=per_block, waves=waves)


def release_at(started: float, schedule: Schedule, finished: float) -> float:
    """When results computed from ``started`` to ``finished`` may leave (same clock as both).

    At the deadline when the job finished in time; otherwise at the next whole quantum
    after the deadline, so that lateness is coarse (see the module docstring).
    """
    deadline = started + schedule.duration_s
    if finished <= deadline:
        return deadline
    return deadline + math.ceil((finished - deadline) / schedule.quantum_s) * schedule.quantum_s
