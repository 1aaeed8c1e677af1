"""Destruction confirmations: their content, fixed by a job's shape, and the auditor's check.

Shared by the connector (which signs a confirmation into every receipt of a job that read
data, and one for every retained version that expires) and the auditor (whose
``yumen audit verify`` refuses a log where an executed job lacks a true one). What is
destroyed and how is described in :mod:`yumen.connectors._destruction` and
docs/connector.md ("Destruction after each job").
"""

from __future__ import annotations

from typing import Any

from yumen.errors import Code, YumenError

__all__ = [
    "BLOCK_FILE",
    "MECHANISM",
    "SANDBOX_SCRATCH",
    "SNAPSHOT_MECHANISM",
    "STAGED_INPUT",
    "check_confirmation",
    "check_version_destroyed",
    "confirmation",
    "expected_items",
]

MECHANISM = ("host files: unlinked and their directories removed, then checked absent with lstat; "
             "sandbox scratch: tmpfs freed with the sandbox's mount namespace or container, the container's "
             "removal checked with the engine")
SNAPSHOT_MECHANISM = "snapshot file unlinked, then checked absent with lstat"

# kinds of item a confirmation may name
STAGED_INPUT = "staged-input"
BLOCK_FILE = "block-file"
SANDBOX_SCRATCH = "sandbox-scratch"


def expected_items(tier: str, blocks: int) -> list[dict[str, Any]]:
    """What a job of this shape stages, by kind and count: fixed before it runs."""
    if tier == "query":
        return []
    if tier == "approved-algorithm":
        return [{"kind": STAGED_INPUT, "count": 1}, {"kind": SANDBOX_SCRATCH, "count": 1}]
    if tier == "custom-algorithm":
        return [{"kind": STAGED_INPUT, "count": 1}, {"kind": BLOCK_FILE, "count": blocks},
                {"kind": SANDBOX_SCRATCH, "count": blocks}]
    raise YumenError(Code.INTERNAL, f"no destruction shape for tier {tier!r}")


def confirmation(tier: str, blocks: int, *, at_ms: int, verified: bool) -> dict[str, Any]:
    """The confirmation a receipt carries (see the module docstring for why it holds only this)."""
    return {"items": expected_items(tier, blocks), "mechanism": MECHANISM, "at_ms": at_ms, "verified": verified}


def _fail(message: str) -> YumenError:
    return YumenError(Code.VERIFICATION_FAILED, message)


def check_confirmation(receipt: dict[str, Any]) -> None:
    """Raise ``VERIFICATION_FAILED`` unless a receipt that executed carries a true, well-formed confirmation.

    ``receipt`` is the decoded receipt payload. A refused job read nothing and staged nothing:
    it needs none. Otherwise the confirmation must exist, say ``verified``, carry the
    receipt's own time, and name the items a job of the receipt's shape stages: a receipt
    metering no sandbox run is a query (nothing staged); one sandbox run with an algorithm
    is approved code (one input, one scratch); ``k`` runs are sample-and-aggregate.
    """
    if receipt.get("status") == "refused":
        return
    d = receipt.get("destruction")
    job = f"job {receipt.get('job_id')} on {receipt.get('dataset')}"
    if not isinstance(d, dict) or not d:
        raise _fail(f"{job} executed without a destruction confirmation in its receipt")
    if d.get("verified") is not True:
        raise _fail(f"{job}: the department could not confirm that its scratch was destroyed")
    if d.get("at_ms") != receipt.get("at_ms"):
        raise _fail(f"{job}: the destruction confirmation's time is not the receipt's")
    if d.get("mechanism") != MECHANISM:
        raise _fail(f"{job}: the destruction confirmation names an unknown mechanism")
    runs = (receipt.get("metering") or {}).get("sandbox_runs", 0)
    if not isinstance(runs, int) or runs < 0:
        raise _fail(f"{job}: the receipt meters an invalid number of sandbox runs")
    failed_early = receipt.get("status") == "failed" and not runs
    if not runs:
        shapes = [expected_items("query", 0)]
        if failed_early:  # an algorithm that failed before metering: its shape is unknown, any is fine
            shapes += [expected_items("approved-algorithm", 1)] + [
                expected_items("custom-algorithm", n) for n in {i.get("count") for i in d.get("items", [])
                                                               if isinstance(i, dict) and i.get("kind") == BLOCK_FILE}
                if isinstance(n, int) and n > 0]
    elif receipt.get("algorithm_digest") and runs == 1:
        shapes = [expected_items("approved-algorithm", 1), expected_items("custom-algorithm", 1)]
    else:
        shapes = [expected_items("custom-algorithm", runs)]
    if d.get("items") not in shapes:
        raise _fail(f"{job}: the destruction confirmation does not match the job's shape "
                    f"({runs} sandbox runs metered)")


def check_version_destroyed(statement: dict[str, Any], version: str) -> None:
    """Raise ``VERIFICATION_FAILED`` unless an expired version's confirmation is true and well-formed."""
    where = f"the destruction of version {version} of {statement.get('dataset')}"
    if statement.get("kind") != "version-destroyed" or statement.get("version") != version:
        raise _fail(f"{where}: the statement is not a confirmation for this version")
    if statement.get("verified") is not True:
        raise _fail(f"{where}: the department could not confirm that the snapshot was destroyed")
    if statement.get("mechanism") != SNAPSHOT_MECHANISM or statement.get("items") != [{"kind": "snapshot", "count": 1}]:
        raise _fail(f"{where}: the confirmation names unknown items or an unknown mechanism")
    if not isinstance(statement.get("at_ms"), int):
        raise _fail(f"{where}: the confirmation has no time")
