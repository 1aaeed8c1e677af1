"""The transparency log: an RFC 6962 Merkle tree of entries, signed C2SP checkpoints, proofs,
export and offline verification, and the gRPC AuditService.

The broker owns one :class:`TransparencyLog` (over a :class:`SQLiteLogStorage` sharing its
database); auditors use :func:`verify_export` or :func:`verify_online`. See docs/audit.md.
"""

from ._client import AuditClient, verify_online
from ._convert import ConsistencyProof, InclusionProof, SignedCheckpoint
from ._entries import (
    ENTRY_FORMAT_VERSION,
    ENTRY_TYPES,
    DatasetRegistered,
    Entry,
    JobDecided,
    JobExecuted,
    JobReleased,
    LicenseChanged,
    PolicyChanged,
    StewardshipRecorded,
    CatalogueChanged,
    ChargeRecorded,
    decode_entry,
    encode_entry,
    entry_from_dict,
)
from ._log import TransparencyLog
from ._merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from ._note import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    generate_log_key,
    load_log_key,
    open_note,
    save_log_key,
    sign_note,
)
from ._replay import Accumulator, BillTotals, BudgetLedger, ReplayContext, ReplayReport, replay
from ._billing import BillingBook, compare_statements, logged_statements, revenue_report
from ._disclosure import disclosure, query_log, render_html, write_disclosure
from ._reconcile import entries_from_export
from ._service import AuditServicer, add_audit_service
from ._storage import LogStorage, SQLiteLogStorage
from ._storage_postgres import PostgresLogStorage
from ._verify import VerificationReport, export, verify_export

__all__ = [
    # entries
    "ENTRY_FORMAT_VERSION",
    "ENTRY_TYPES",
    "Entry",
    "DatasetRegistered",
    "PolicyChanged",
    "StewardshipRecorded",
    "CatalogueChanged",
    "ChargeRecorded",
    "LicenseChanged",
    "JobDecided",
    "JobExecuted",
    "JobReleased",
    "encode_entry",
    "decode_entry",
    "entry_from_dict",
    # tree
    "EMPTY_ROOT",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_inclusion",
    "verify_consistency",
    # checkpoints and keys
    "Checkpoint",
    "NoteSigner",
    "NoteVerifier",
    "sign_note",
    "open_note",
    "generate_log_key",
    "save_log_key",
    "load_log_key",
    # storage and log
    "LogStorage",
    "SQLiteLogStorage",
    "PostgresLogStorage",
    "TransparencyLog",
    # export and verification
    "VerificationReport",
    "export",
    "verify_export",
    # online
    "AuditServicer",
    "add_audit_service",
    "AuditClient",
    "verify_online",
    "InclusionProof",
    "ConsistencyProof",
    "SignedCheckpoint",
    # replay
    "replay",
    "entries_from_export",
    # billing (docs/billing.md)
    "BillingBook",
    "compare_statements",
    "logged_statements",
    "revenue_report",
    "disclosure",
    "query_log",
    "render_html",
    "write_disclosure",
    "ReplayContext",
    "ReplayReport",
    "Accumulator",
    "BudgetLedger",
    "BillTotals",
]
