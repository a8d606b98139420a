"""The outbox's tables and their migrations.

An outbox written by any older version opens: columns are added, never dropped or renamed, and the
one-job-per-record index is rebuilt under its new name once the rows it would refuse are flagged.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils
import structlog

from sfsign.outbox.envelope_schema import migrate_envelopes
from sfsign.outbox.models import ARCHIVE_SOURCE, REENTRY_STATES
from sfsign.outbox.signed_memory import create_signed_memory
from sfsign.private_files import private_dir, private_file
from sfsign.salesforce.ids import InvalidId, canonical_id

log = structlog.get_logger("sfsign.outbox")

JOB_COLUMNS: dict[str, type] = {
    "id": int,
    "transaction_id": str,
    "rule": str,
    "sobject": str,
    "record_id": str,
    "source": str,
    "state": str,
    "attempts": int,
    "next_attempt_at": float,
    "created_at": float,
    "updated_at": float,
    "event_time_ms": int,
    "requested_by": str,
    "channel": str,
    "replay_id": int,
    "last_error": str,
    "error_code": str,
    "document_json": str,
    "file_name": str,
    "content_version_id": str,
    "content_document_id": str,
    "upload_uncertain": int,
    "sha256": str,
    "level": str,
    "signer_subject": str,
    "signer_serial": str,
    "signed_at": str,
    "done_at": float,
    "timestamp_time": str,
    "validation": str,
    "ltv_sha256": str,
    "ltv_level": str,
    "ltv_version_id": str,
    "archive_due": str,
    "signed_visible_at": float,
    "failing_since": float,
    "file_title": str,
    "duplicate_of": int,
    "reason": str,
    "superseded_by": str,
    "pending_shown_at": float,
    "signers_json": str,
    "envelope_sent_at": float,
    "certificate_sha256": str,
    "certificate_version_id": str,
}

# One live (or done) job per record and rule: the duplicate check in `_duplicate_reason`, enforced by
# SQLite. `duplicate_of` marks the second contracts that outboxes of older versions already hold; a job
# superseded by a Re-issue (`superseded_by`) leaves the slot to the new version.
ONE_PER_RECORD_INDEX_NAME = "jobs_one_per_record_v4"  # v3: `skipped` leaves the slot free; v4: `envelope_ended`
ONE_PER_RECORD_INDEX = (
    f"CREATE UNIQUE INDEX IF NOT EXISTS {ONE_PER_RECORD_INDEX_NAME} ON jobs (sobject, record_id, rule) "
    "WHERE state NOT IN ("
    + ", ".join(f"'{s.value}'" for s in REENTRY_STATES)
    + f") AND source != '{ARCHIVE_SOURCE}' AND duplicate_of IS NULL AND superseded_by IS NULL"
)


def open_database(path: Path) -> sqlite_utils.Database:
    """Open (or create) the outbox at `path` in WAL mode and migrate it to the current schema."""
    # Customer data: owner-only whatever the umask. SQLite gives the -wal and -shm files the
    # database file's mode, so creating that file first with 0600 covers all three.
    private_dir(path.parent)
    private_file(path)
    for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if companion.exists():
            private_file(companion)
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    db.execute("PRAGMA synchronous=NORMAL")
    migrate(db)
    return db


def migrate(db: sqlite_utils.Database) -> None:
    """Bring a new or older outbox to the current schema: add what is missing, never drop or rename."""
    jobs = db["jobs"]
    if not jobs.exists():
        db.create_table(
            "jobs",
            JOB_COLUMNS,
            pk="id",
            not_null={"transaction_id", "rule", "sobject", "record_id", "state", "attempts"},
            defaults={"attempts": 0, "upload_uncertain": 0},
        )
        db.table("jobs").create_index(["transaction_id"], unique=True)
        db.table("jobs").create_index(["state", "next_attempt_at"])
        db.table("jobs").create_index(["sobject", "record_id", "rule"])
    else:
        # An outbox written by an older version: add the columns it lacks (never drop or rename).
        have = set(jobs.columns_dict)
        for name, kind in JOB_COLUMNS.items():
            if name not in have:
                jobs.add_column(name, kind)  # type: ignore[union-attr]
    if not db["replay"].exists():
        db.create_table("replay", {"channel": str, "replay_id": int, "updated_at": float}, pk="channel")
    _replay_transport(db)
    if not db["meta"].exists():
        db.create_table("meta", {"key": str, "value": str}, pk="key")
    if not db["audit"].exists():
        # One row per state change, written with it; flushed to Signature_Event__c in batches.
        db.create_table(
            "audit",
            {"id": int, "transaction_id": str, "sobject": str, "record_id": str, "event_type": str,
             "occurred_at": str, "actor": str, "detail": str, "status": str, "error": str},
            pk="id",
            defaults={"status": "pending"},
        )
        db.table("audit").create_index(["status", "id"])
    if not db["parked_events"].exists():
        db.create_table(
            "parked_events",
            {"id": int, "channel": str, "replay_id": int, "reason": str, "attempts": int, "parked_at": float,
             "payload": str},
            pk="id",
        )
    indexes = {i.name for i in db.table("jobs").indexes}
    if ONE_PER_RECORD_INDEX_NAME not in indexes:
        older = ("jobs_one_per_record", "jobs_one_per_record_v2", "jobs_one_per_record_v3")
        if not set(older) & indexes:  # predecessors came after it
            _canonical_record_ids(db.conn)
        for name in older:
            db.execute(f"DROP INDEX IF EXISTS {name}")
        db.execute(ONE_PER_RECORD_INDEX)
    if not db["signed_documents"].exists():
        create_signed_memory(db.conn)
    migrate_envelopes(db.conn)  # customer signing (issue 14): its own module


def _replay_transport(db: sqlite_utils.Database) -> None:
    """Migration for Pub/Sub (issue 15): a channel's position is CometD's integer (`replay_id`) or Pub/Sub's
    opaque bytes (`pubsub_replay_id`), and `transport` says which. One row per channel: committing a position
    of one transport replaces the other's, so a client never resumes from a position the other wrote (it
    starts as on a first start instead, and intake reconciles; docs/streaming.md). Rows written before are
    CometD's."""
    replay = db["replay"]
    have = set(replay.columns_dict)
    if "pubsub_replay_id" not in have:
        replay.add_column("pubsub_replay_id", bytes)  # type: ignore[union-attr]
    if "transport" not in have:
        replay.add_column("transport", str)  # type: ignore[union-attr]
        db.execute("UPDATE replay SET transport = 'cometd' WHERE transport IS NULL")


def _canonical_record_ids(conn: sqlite3.Connection) -> None:
    """Migration for outboxes written before ids were normalised: rewrite every record id to its
    18-character form, then flag the second and later live jobs of one record and rule (contracts
    already signed twice) with `duplicate_of`, so the unique index can be built. Nothing is deleted."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in ("jobs", "audit"):
            for (raw,) in conn.execute(f"SELECT DISTINCT record_id FROM {table}").fetchall():
                try:
                    fixed = canonical_id(raw)
                except InvalidId:
                    continue
                if fixed != raw:
                    conn.execute(f"UPDATE {table} SET record_id = ? WHERE record_id = ?", (fixed, raw))
        live = ", ".join(f"'{s.value}'" for s in REENTRY_STATES)
        groups = conn.execute(
            f"SELECT sobject, record_id, rule, MIN(id) FROM jobs WHERE state NOT IN ({live}) "
            f"AND source != ? AND duplicate_of IS NULL GROUP BY sobject, record_id, rule HAVING COUNT(*) > 1",
            (ARCHIVE_SOURCE,),
        ).fetchall()
        for sobject, record_id, rule, first in groups:
            conn.execute(
                f"UPDATE jobs SET duplicate_of = ? WHERE sobject = ? AND record_id = ? AND rule = ? AND id != ? "
                f"AND state NOT IN ({live}) AND source != ? AND duplicate_of IS NULL",
                (first, sobject, record_id, rule, first, ARCHIVE_SOURCE),
            )
            log.warning("outbox migration: this record has more than one job for one rule (signed twice "
                        "by an older version); the later ones are flagged duplicate_of",
                        sobject=sobject, record_id=record_id, rule=rule, first_job=first)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
