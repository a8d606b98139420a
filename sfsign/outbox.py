"""The SQLite outbox: jobs, their states, and the replay position of every channel.

The outbox is what makes sfsign exactly-once. An event's jobs and the channel's new replay id are
written in one SQLite transaction, so after a crash either both exist or the event is replayed; the
transaction id is derived from the trigger, so a replayed event maps onto the job it already created.
All access goes through one thread: SQLite serialises writers anyway, and the event loop never waits
on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils
import structlog

from sfsign.private_files import private_dir, private_file
from sfsign.salesforce.ids import InvalidId, canonical_id
from sfsign.salesforce.names import AUDIT_RETRIED, AUDIT_SUPERSEDED, LONG_TEXT_WRITE_MAX

T = TypeVar("T")

log = structlog.get_logger("sfsign.outbox")


class JobState(StrEnum):
    QUEUED = "queued"
    FETCHED = "fetched"
    RENDERED = "rendered"
    SIGNED = "signed"
    UPLOADED = "uploaded"
    # B-LT/B-LTA: the record already shows `Signed` (B-T); the upgrade runs in the background.
    LTV_PENDING = "ltv_pending"
    LTV_UPGRADED = "ltv_upgraded"
    LTV_UPLOADED = "ltv_uploaded"
    DONE = "done"
    ERROR = "error"  # permanent: reason written on the record; `sfsign retry` re-queues it
    DEAD = "dead"  # failed transiently for the whole retry window: a person must act, then `sfsign retry`
    # The record's type is not one of the rule's `record_types` (seen at fetch): nothing signed, nothing to retry.
    SKIPPED = "skipped"


ACTIVE_STATES = (
    JobState.QUEUED,
    JobState.FETCHED,
    JobState.RENDERED,
    JobState.SIGNED,
    JobState.UPLOADED,
    JobState.LTV_PENDING,
    JobState.LTV_UPGRADED,
    JobState.LTV_UPLOADED,
)
# After these, the same record entering the trigger state again starts a new transaction.
REENTRY_STATES = (JobState.ERROR, JobState.DEAD, JobState.SKIPPED)
# Of those, the ones `sfsign retry` puts back in the queue (a skipped job would only be skipped again).
RETRYABLE_STATES = (JobState.ERROR, JobState.DEAD)
# Jobs that renew the archive timestamp of a document already signed (sfsign/archive.py): they sit beside
# the record's `done` job, so the one-job-per-record index leaves them out.
_ARCHIVE_SOURCE = "ltv-refresh"
# A Re-issue request: signs a new version of a record already signed, superseding the signed job.
REISSUE_SOURCE = "reissue"
# One live (or done) job per record and rule: the duplicate check in `_duplicate_reason`, enforced by
# SQLite. `duplicate_of` marks the second contracts that outboxes of older versions already hold; a job
# superseded by a Re-issue (`superseded_by`) leaves the slot to the new version.
_ONE_PER_RECORD_INDEX_NAME = "jobs_one_per_record_v3"  # v3: `skipped` leaves the slot free too
_ONE_PER_RECORD_INDEX = (
    f"CREATE UNIQUE INDEX IF NOT EXISTS {_ONE_PER_RECORD_INDEX_NAME} ON jobs (sobject, record_id, rule) "
    "WHERE state NOT IN ("
    + ", ".join(f"'{s.value}'" for s in REENTRY_STATES)
    + f") AND source != '{_ARCHIVE_SOURCE}' AND duplicate_of IS NULL AND superseded_by IS NULL"
)
# States whose document is on the record (or about to be, written back): a new trigger for the record
# and rule signs nothing, it is told "already signed" (see `OutboxStore.signed_job`).
SIGNED_STATES = (JobState.UPLOADED, JobState.LTV_PENDING, JobState.LTV_UPGRADED, JobState.LTV_UPLOADED,
                 JobState.DONE)
SIGNED_VALUES = frozenset(s.value for s in SIGNED_STATES)
REENTRY_VALUES = frozenset(s.value for s in REENTRY_STATES)


@dataclass(frozen=True)
class NewJob:
    transaction_id: str
    rule: str
    sobject: str
    record_id: str
    source: str  # cdc | event | gap | reconcile | reissue
    event_time_ms: int | None = None
    requested_by: str | None = None
    reason: str | None = None  # what the rep typed in the flow (`Reason__c`); in the audit trail


@dataclass(frozen=True)
class AuditEvent:
    """An audit row that belongs to no job (a refused request), written with the event's commit."""

    transaction_id: str
    sobject: str
    record_id: str
    event_type: str
    actor: str
    detail: str


@dataclass(frozen=True)
class ParkedEvent:
    """An event intake gave up on: kept with its payload and reason so nothing is silently dropped."""

    id: int
    channel: str
    replay_id: int | None
    reason: str
    attempts: int
    parked_at: float
    payload: str  # the raw Bayeux message as JSON


@dataclass(frozen=True)
class Job:
    id: int
    transaction_id: str
    rule: str
    sobject: str
    record_id: str
    source: str
    state: JobState
    attempts: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    event_time_ms: int | None = None
    requested_by: str | None = None
    channel: str | None = None
    replay_id: int | None = None
    last_error: str | None = None
    error_code: str | None = None
    document_json: str | None = None
    file_name: str | None = None
    content_version_id: str | None = None
    content_document_id: str | None = None
    upload_uncertain: int = 0
    sha256: str | None = None
    level: str | None = None
    signer_subject: str | None = None
    signer_serial: str | None = None
    signed_at: str | None = None
    done_at: float | None = None
    timestamp_time: str | None = None
    validation: str | None = None
    ltv_sha256: str | None = None
    ltv_level: str | None = None
    ltv_version_id: str | None = None
    archive_due: str | None = None
    signed_visible_at: float | None = None  # when the record first showed `Signed`
    failing_since: float | None = None  # first failure since the job last moved on: the retry window's start
    file_title: str | None = None  # the ContentVersion Title as the rule wrote it (file_name is allow-listed)
    duplicate_of: int | None = None  # a second job of one record from before the unique index (migration)
    reason: str | None = None  # the rep's reason (`Reason__c`)
    superseded_by: str | None = None  # transaction id of the Re-issue that replaced this document
    pending_shown_at: float | None = None  # when the record was told `Pending` while the job waited for a worker

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in row.items() if k in names}
        data["state"] = JobState(data["state"])
        return cls(**data)


@dataclass(frozen=True)
class CommitResult:
    created: list[Job]
    duplicates: list[tuple[NewJob, str]]  # (job, why it was not created)


@dataclass(frozen=True)
class SignedDocument:
    """A record's current signed document for a rule: what the already-signed rule needs, and no more.

    It comes from the job row while retention keeps it, else from the `signed_documents` memory, which
    outlives the purge because it names no person (ids, the transaction, a time). `job_id` is None when
    only the memory knows the document.
    """

    sobject: str
    record_id: str
    rule: str
    transaction_id: str
    signed_at: str | None
    content_document_id: str | None
    job_id: int | None = None

    @classmethod
    def of_job(cls, job: Job) -> SignedDocument:
        return cls(job.sobject, job.record_id, job.rule, job.transaction_id,
                   job.signed_at or audit_time(job.done_at or job.updated_at), job.content_document_id, job.id)


# Finished jobs: the only rows retention may delete. Active jobs are never purged, whatever their age.
FINISHED_STATES = (JobState.DONE, JobState.ERROR, JobState.DEAD, JobState.SKIPPED)


@dataclass(frozen=True)
class PurgeResult:
    """What a retention purge removed (or, dry run, would remove)."""

    jobs: dict[str, int]  # state -> rows
    audit_rows: int

    @property
    def job_rows(self) -> int:
        return sum(self.jobs.values())


_JOB_COLUMNS: dict[str, type] = {
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
}


def audit_time(at: float | None = None) -> str:
    """An audit event's time as Salesforce takes a datetime: UTC, milliseconds, Z."""
    at = time.time() if at is None else at
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


class OutboxStore:
    """Synchronous SQLite access; use it from one thread (see `Outbox` for the async face)."""

    def __init__(self, path: Path) -> None:
        # Customer data: owner-only whatever the umask. SQLite gives the -wal and -shm files the
        # database file's mode, so creating that file first with 0600 covers all three.
        private_dir(path.parent)
        private_file(path)
        for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if companion.exists():
                private_file(companion)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        jobs = self.db["jobs"]
        if not jobs.exists():
            self.db.create_table(
                "jobs",
                _JOB_COLUMNS,
                pk="id",
                not_null={"transaction_id", "rule", "sobject", "record_id", "state", "attempts"},
                defaults={"attempts": 0, "upload_uncertain": 0},
            )
            self.db.table("jobs").create_index(["transaction_id"], unique=True)
            self.db.table("jobs").create_index(["state", "next_attempt_at"])
            self.db.table("jobs").create_index(["sobject", "record_id", "rule"])
        else:
            # An outbox written by an older version: add the columns it lacks (never drop or rename).
            have = set(jobs.columns_dict)
            for name, kind in _JOB_COLUMNS.items():
                if name not in have:
                    jobs.add_column(name, kind)  # type: ignore[union-attr]
        if not self.db["replay"].exists():
            self.db.create_table("replay", {"channel": str, "replay_id": int, "updated_at": float}, pk="channel")
        if not self.db["meta"].exists():
            self.db.create_table("meta", {"key": str, "value": str}, pk="key")
        if not self.db["audit"].exists():
            # One row per state change, written with it; flushed to Signature_Event__c in batches.
            self.db.create_table(
                "audit",
                {"id": int, "transaction_id": str, "sobject": str, "record_id": str, "event_type": str,
                 "occurred_at": str, "actor": str, "detail": str, "status": str, "error": str},
                pk="id",
                defaults={"status": "pending"},
            )
            self.db.table("audit").create_index(["status", "id"])
        if not self.db["parked_events"].exists():
            self.db.create_table(
                "parked_events",
                {"id": int, "channel": str, "replay_id": int, "reason": str, "attempts": int, "parked_at": float,
                 "payload": str},
                pk="id",
            )
        indexes = {i.name for i in self.db.table("jobs").indexes}
        if _ONE_PER_RECORD_INDEX_NAME not in indexes:
            if not {"jobs_one_per_record", "jobs_one_per_record_v2"} & indexes:  # predecessors came after it
                self._canonical_record_ids()
            self.db.execute("DROP INDEX IF EXISTS jobs_one_per_record")
            self.db.execute("DROP INDEX IF EXISTS jobs_one_per_record_v2")
            self.db.execute(_ONE_PER_RECORD_INDEX)
        if not self.db["signed_documents"].exists():
            self._create_signed_memory()

    def _create_signed_memory(self) -> None:
        """Migration: the memory of each record's current signed document per rule, filled from the signed
        jobs an existing outbox holds (after the record ids were made canonical, so keys match)."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS signed_documents (sobject TEXT NOT NULL, record_id TEXT NOT NULL, "
                "rule TEXT NOT NULL, transaction_id TEXT NOT NULL, signed_at TEXT, content_document_id TEXT, "
                "superseded_by TEXT, updated_at FLOAT, PRIMARY KEY (sobject, record_id, rule))"
            )
            states = [s.value for s in SIGNED_STATES]
            ids = conn.execute(
                f"SELECT id FROM jobs WHERE state IN ({', '.join('?' for _ in states)}) AND source != ? "
                "AND duplicate_of IS NULL AND superseded_by IS NULL ORDER BY id",
                (*states, _ARCHIVE_SOURCE),
            ).fetchall()
            for (job_id,) in ids:
                self._remember(int(job_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if ids:
            log.info("outbox migration: remembered the signed document of each record", documents=len(ids))

    def _canonical_record_ids(self) -> None:
        """Migration for outboxes written before ids were normalised: rewrite every record id to its
        18-character form, then flag the second and later live jobs of one record and rule (contracts
        already signed twice) with `duplicate_of`, so the unique index can be built. Nothing is deleted."""
        conn = self.db.conn
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
                (_ARCHIVE_SOURCE,),
            ).fetchall()
            for sobject, record_id, rule, first in groups:
                conn.execute(
                    f"UPDATE jobs SET duplicate_of = ? WHERE sobject = ? AND record_id = ? AND rule = ? AND id != ? "
                    f"AND state NOT IN ({live}) AND source != ? AND duplicate_of IS NULL",
                    (first, sobject, record_id, rule, first, _ARCHIVE_SOURCE),
                )
                log.warning("outbox migration: this record has more than one job for one rule (signed twice "
                            "by an older version); the later ones are flagged duplicate_of",
                            sobject=sobject, record_id=record_id, rule=rule, first_job=first)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------------- intake

    def commit_event(
        self, channel: str | None, replay_id: int | None, jobs: Iterable[NewJob], audit: Iterable[AuditEvent] = ()
    ) -> CommitResult:
        """Insert an event's jobs (and audit rows of what it was refused) and advance the channel's replay
        id, atomically."""
        now = time.time()
        created: list[Job] = []
        duplicates: list[tuple[NewJob, str]] = []
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for job in jobs:
                reason = self._duplicate_reason(job)
                superseded: SignedDocument | None = None
                if reason and job.source == REISSUE_SOURCE and not self.has_transaction(job.transaction_id):
                    superseded = self.signed_job(job.sobject, job.record_id, job.rule)
                    if superseded is not None:
                        reason = None
                    else:
                        reason = f"{reason}: a signature is in progress; Re-issue once it is signed"
                if reason:
                    duplicates.append((job, reason))
                    continue
                if superseded is not None:
                    if superseded.job_id is not None:
                        conn.execute("UPDATE jobs SET superseded_by = ?, updated_at = ? WHERE id = ?",
                                     (job.transaction_id, now, superseded.job_id))
                    conn.execute("UPDATE signed_documents SET superseded_by = ?, updated_at = ? WHERE sobject = ? "
                                 "AND record_id = ? AND rule = ? AND transaction_id = ?",
                                 (job.transaction_id, now, job.sobject, job.record_id, job.rule,
                                  superseded.transaction_id))
                    self._audit_row(superseded.transaction_id, job.sobject, job.record_id, AUDIT_SUPERSEDED,
                                    job.requested_by or "sfsign",
                                    f"Superseded by Re-issue transaction {job.transaction_id}; reason: "
                                    f"{job.reason or '(none given)'}")
                row = {
                    "transaction_id": job.transaction_id,
                    "rule": job.rule,
                    "sobject": job.sobject,
                    "record_id": job.record_id,
                    "source": job.source,
                    "state": JobState.QUEUED.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                    "event_time_ms": job.event_time_ms,
                    "requested_by": job.requested_by,
                    "reason": job.reason,
                    "channel": channel,
                    "replay_id": replay_id,
                    "upload_uncertain": 0,
                }
                cur = conn.execute(
                    f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)}) "
                    "ON CONFLICT DO NOTHING",
                    list(row.values()),
                )
                if cur.rowcount == 0:  # the unique indexes caught what the check above did not
                    duplicates.append((job, "the record already has a job for this rule (unique index)"))
                    continue
                created.append(Job.from_row({**row, "id": cur.lastrowid}))
                detail = f"source: {job.source}, rule: {job.rule}"
                if superseded is not None:
                    detail += f", supersedes transaction {superseded.transaction_id}"
                if job.reason:
                    detail += f", reason: {job.reason}"
                self._audit(int(cur.lastrowid or 0), JobState.QUEUED.value, job.requested_by or "sfsign", detail)
            for event in audit:
                self.db.execute(
                    "INSERT INTO audit (transaction_id, sobject, record_id, event_type, occurred_at, actor, detail, "
                    "status) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                    (event.transaction_id, event.sobject, event.record_id, event.event_type, audit_time(now),
                     event.actor, event.detail[:LONG_TEXT_WRITE_MAX]),
                )
            self._set_replay(channel, replay_id, now)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return CommitResult(created, duplicates)

    def _set_replay(self, channel: str | None, replay_id: int | None, now: float) -> None:
        if channel is not None and replay_id is not None:
            self.db.conn.execute(
                "INSERT INTO replay (channel, replay_id, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(channel) DO UPDATE SET replay_id = excluded.replay_id, "
                "updated_at = excluded.updated_at",
                (channel, replay_id, now),
            )

    def park_event(
        self, channel: str, replay_id: int | None, message: Any, reason: str, attempts: int
    ) -> ParkedEvent:
        """Keep an event intake gives up on (its payload and why) and move the channel's replay id past
        it, atomically: the stream goes on, and the event stays for operators (`sfsign status`)."""
        now = time.time()
        payload = json.dumps(message, ensure_ascii=False, default=str)
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                "INSERT INTO parked_events (channel, replay_id, reason, attempts, parked_at, payload) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (channel, replay_id, reason[:32000], attempts, now, payload),
            )
            self._set_replay(channel, replay_id, now)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return ParkedEvent(int(cur.lastrowid or 0), channel, replay_id, reason, attempts, now, payload)

    def parked_events(self, limit: int = 20) -> list[ParkedEvent]:
        """Newest first."""
        rows = self.db.execute(
            "SELECT id, channel, replay_id, reason, attempts, parked_at, payload FROM parked_events "
            "ORDER BY id DESC LIMIT ?", (limit,),
        ).fetchall()
        return [ParkedEvent(int(r[0]), str(r[1]), r[2], str(r[3]), int(r[4] or 0), float(r[5]), str(r[6]))
                for r in rows]

    def parked_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM parked_events").fetchone()[0])

    def has_transaction(self, transaction_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM jobs WHERE transaction_id = ?", (transaction_id,)).fetchone() is not None

    def knows_transaction(self, transaction_id: str) -> bool:
        """Whether this outbox ever had the transaction: a job row, or the memory of its signed document."""
        return self.has_transaction(transaction_id) or self.db.execute(
            "SELECT 1 FROM signed_documents WHERE transaction_id = ?", (transaction_id,)).fetchone() is not None

    def signed_job(self, sobject: str, record_id: str, rule: str) -> SignedDocument | None:
        """The record's current signed document for `rule` (not superseded): from its job while retention
        keeps the row, else from the signed-document memory, which the purge leaves while it is current."""
        states = [s.value for s in SIGNED_STATES]
        rows = self._job_rows(
            f"SELECT * FROM jobs WHERE sobject = ? AND record_id = ? AND rule = ? AND state IN "
            f"({', '.join('?' for _ in states)}) AND source != ? AND duplicate_of IS NULL AND superseded_by IS NULL "
            "ORDER BY id DESC LIMIT 1",
            (sobject, record_id, rule, *states, _ARCHIVE_SOURCE),
        )
        if rows:
            return SignedDocument.of_job(rows[0])
        row = self.db.execute(
            "SELECT transaction_id, signed_at, content_document_id FROM signed_documents WHERE sobject = ? "
            "AND record_id = ? AND rule = ? AND superseded_by IS NULL",
            (sobject, record_id, rule),
        ).fetchone()
        return SignedDocument(sobject, record_id, rule, str(row[0]), row[1], row[2]) if row else None

    def _duplicate_reason(self, job: NewJob) -> str | None:
        same = self.db.execute(
            "SELECT state FROM jobs WHERE transaction_id = ?", (job.transaction_id,)
        ).fetchone()
        if same:
            return f"transaction {job.transaction_id} already exists ({same[0]})"
        placeholders = ", ".join("?" for _ in REENTRY_STATES)
        other = self.db.execute(
            f"SELECT transaction_id, state FROM jobs WHERE sobject = ? AND record_id = ? AND rule = ? "
            f"AND state NOT IN ({placeholders}) AND source != ? AND superseded_by IS NULL ORDER BY id DESC LIMIT 1",
            (job.sobject, job.record_id, job.rule, *[s.value for s in REENTRY_STATES], _ARCHIVE_SOURCE),
        ).fetchone()
        if other:
            return f"record already has transaction {other[0]} ({other[1]}) for rule {job.rule}"
        signed = self.signed_job(job.sobject, job.record_id, job.rule)  # its job row may be purged
        if signed is not None:
            return f"record already signed in transaction {signed.transaction_id} for rule {job.rule}"
        return None

    def records_with_jobs(self, sobject: str, rule: str, record_ids: Iterable[str]) -> set[str]:
        """Which of these records already have a job for `rule`, in any state, finished or not.

        The periodic reconciliation leaves them alone: it is the safety net for triggers the stream never
        delivered, and an `error` or `dead` job is retried by command (`sfsign retry`), not by a timer.
        """
        ids = list(dict.fromkeys(record_ids))
        found: set[str] = set()
        for start in range(0, len(ids), 500):  # well below SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            rows = self.db.execute(
                f"SELECT DISTINCT record_id FROM jobs WHERE sobject = ? AND rule = ? "
                f"AND record_id IN ({', '.join('?' for _ in chunk)})",
                (sobject, rule, *chunk),
            ).fetchall()
            found.update(str(r[0]) for r in rows)
        return found

    def add_archive_job(
        self, *, transaction_id: str, rule: str, sobject: str, record_id: str, content_document_id: str,
        content_version_id: str, source: str,
    ) -> bool:
        """A job that renews a B-LTA file's archive timestamp: it starts at `ltv_pending` and the record
        already shows `Signed`. Returns False if this renewal was queued before (same transaction id)."""
        now = time.time()
        row = {
            "transaction_id": transaction_id, "rule": rule, "sobject": sobject, "record_id": record_id,
            "source": source, "state": JobState.LTV_PENDING.value, "attempts": 0, "next_attempt_at": now,
            "created_at": now, "updated_at": now, "upload_uncertain": 0, "level": "B-LTA",
            "content_document_id": content_document_id, "content_version_id": content_version_id,
            "signed_visible_at": now,
        }
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM jobs WHERE transaction_id = ?", (transaction_id,)).fetchone():
                conn.execute("ROLLBACK")
                return False
            cur = conn.execute(
                f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values())
            )
            self._audit(int(cur.lastrowid or 0), JobState.LTV_PENDING.value, "sfsign ltv-refresh",
                        f"archive timestamp renewal of file {content_document_id}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return True

    def replay_id(self, channel: str) -> int | None:
        row = self.db.execute("SELECT replay_id FROM replay WHERE channel = ?", (channel,)).fetchone()
        return int(row[0]) if row else None

    def reset_replay(self, channel: str) -> None:
        self.db.execute("DELETE FROM replay WHERE channel = ?", (channel,))

    # ------------------------------------------------------------------------------------- workers

    def claim_due(self, now: float, limit: int, exclude: Iterable[int] = ()) -> list[Job]:
        excluded = list(exclude)
        states = [s.value for s in ACTIVE_STATES]
        sql = (
            f"SELECT * FROM jobs WHERE state IN ({', '.join('?' for _ in states)}) AND next_attempt_at <= ?"
            + (f" AND id NOT IN ({', '.join('?' for _ in excluded)})" if excluded else "")
            + " ORDER BY next_attempt_at, id LIMIT ?"
        )
        rows = self.db.execute(sql, [*states, now, *excluded, limit]).fetchall()
        cols = [d[0] for d in self.db.execute("SELECT * FROM jobs LIMIT 0").description]
        return [Job.from_row(dict(zip(cols, r, strict=True))) for r in rows]

    def waiting_unannounced(self, older_than: float, limit: int, exclude: Iterable[int] = ()) -> list[Job]:
        """Jobs queued before `older_than` that no worker has started yet (no attempt: a retrying job shows
        its own reason) and whose record was not told `Pending` yet; oldest first."""
        excluded = list(exclude)
        sql = (
            "SELECT * FROM jobs WHERE state = ? AND attempts = 0 AND pending_shown_at IS NULL"
            " AND signed_visible_at IS NULL AND created_at <= ?"
            + (f" AND id NOT IN ({', '.join('?' for _ in excluded)})" if excluded else "")
            + " ORDER BY created_at, id LIMIT ?"
        )
        return self._job_rows(sql, [JobState.QUEUED.value, older_than, *excluded, limit])

    def mark_pending_shown(self, ids: list[int], at: float) -> None:
        """Record that these jobs' records were told `Pending` (once per job, never again)."""
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            self.db.execute(f"UPDATE jobs SET pending_shown_at = ? WHERE id IN ({', '.join('?' for _ in part)})",
                            [at, *part])

    def next_due_at(self, exclude: Iterable[int] = ()) -> float | None:
        """When the next job not in `exclude` (the ones already running) falls due."""
        excluded = list(exclude)
        states = [s.value for s in ACTIVE_STATES]
        row = self.db.execute(
            f"SELECT MIN(next_attempt_at) FROM jobs WHERE state IN ({', '.join('?' for _ in states)})"
            + (f" AND id NOT IN ({', '.join('?' for _ in excluded)})" if excluded else ""),
            [*states, *excluded],
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def update(
        self,
        job_id: int,
        *,
        audit_detail: str | None = None,
        audit: bool = True,
        audit_occurred_at: str | None = None,
        audit_sent: bool = False,
        **changes: Any,
    ) -> Job:
        """Change a job; a change of state also writes its audit row, in the same transaction. The row
        is `sent` already when the event went to Salesforce with the step's own call (`audit_sent`)."""
        if "state" in changes and isinstance(changes["state"], JobState):
            changes["state"] = changes["state"].value
        changes["updated_at"] = time.time()
        unknown = set(changes) - set(_JOB_COLUMNS)
        if unknown:
            raise KeyError(f"unknown job columns: {sorted(unknown)}")
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            sets = ", ".join(f"{k} = ?" for k in changes)
            conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*changes.values(), job_id])
            if "state" in changes or "content_document_id" in changes:
                self._remember(job_id)
            if audit and "state" in changes and before is not None and before[0] != changes["state"]:
                self._audit(job_id, changes["state"], "sfsign", audit_detail,
                            occurred=audit_occurred_at, status="sent" if audit_sent else "pending")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return self.get(job_id)

    def _remember(self, job_id: int) -> None:
        """Keep the signed-document memory in step with a job that just changed, inside the caller's
        transaction: a job whose document is on the record (a signed state, not superseded, not an archive
        renewal or a flagged duplicate) becomes the record's current document for its rule; a job that
        leaves for `error`/`dead` (`sfsign retry` puts it back) stops being it, as `signed_job` reads jobs."""
        row = self.db.conn.execute(
            "SELECT sobject, record_id, rule, transaction_id, state, source, duplicate_of, superseded_by, signed_at, "
            "done_at, updated_at, content_document_id FROM jobs WHERE id = ?", (job_id,),
        ).fetchone()
        if row is None:
            return
        sobject, record_id, rule, tx, state, source, duplicate_of, superseded_by, signed_at, done_at, updated_at, \
            document_id = row
        if state in REENTRY_VALUES:
            self.db.conn.execute("DELETE FROM signed_documents WHERE transaction_id = ? AND superseded_by IS NULL",
                                 (tx,))
            return
        if state not in SIGNED_VALUES or source == _ARCHIVE_SOURCE or duplicate_of is not None \
                or superseded_by is not None:
            return
        self.db.conn.execute(
            "INSERT INTO signed_documents (sobject, record_id, rule, transaction_id, signed_at, content_document_id, "
            "superseded_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (sobject, record_id, rule) "
            "DO UPDATE SET transaction_id = excluded.transaction_id, signed_at = excluded.signed_at, "
            "content_document_id = excluded.content_document_id, superseded_by = NULL, "
            "updated_at = excluded.updated_at",
            (sobject, record_id, rule, tx, signed_at or audit_time(done_at or updated_at), document_id, time.time()),
        )

    def _audit(
        self, job_id: int, event_type: str, actor: str, detail: str | None, *, occurred: str | None = None,
        status: str = "pending",
    ) -> None:
        row = self.db.execute(
            "SELECT transaction_id, sobject, record_id FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        self._audit_row(row[0], row[1], row[2], event_type, actor, detail, occurred=occurred, status=status)

    def _audit_row(
        self, transaction_id: str, sobject: str, record_id: str, event_type: str, actor: str, detail: str | None,
        *, occurred: str | None = None, status: str = "pending",
    ) -> None:
        self.db.execute(
            "INSERT INTO audit (transaction_id, sobject, record_id, event_type, occurred_at, actor, detail, status)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (transaction_id, sobject, record_id, event_type, occurred or audit_time(), actor,
             (detail or "")[:LONG_TEXT_WRITE_MAX], status),
        )

    def pending_audit(self, limit: int = 200, older_than: str | None = None) -> list[dict[str, Any]]:
        """Audit rows not yet in Salesforce, oldest first; `older_than` (an `audit_time`) leaves out the
        newer ones (those of jobs still running, which their own write-back will carry)."""
        cur = self.db.execute(
            "SELECT * FROM audit WHERE status = 'pending'" + (" AND occurred_at <= ?" if older_than else "")
            + " ORDER BY id LIMIT ?",
            (older_than, limit) if older_than else (limit,),
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def mark_audit(self, ids: list[int], status: str, error: str | None = None) -> None:
        if ids:
            marks = ", ".join("?" for _ in ids)
            self.db.execute(f"UPDATE audit SET status = ?, error = ? WHERE id IN ({marks})", [status, error, *ids])

    def get(self, job_id: int) -> Job:
        return Job.from_row(self.db.table("jobs").get(job_id))

    def by_transaction(self, transaction_id: str) -> Job | None:
        rows = list(self.db.table("jobs").rows_where("transaction_id = ?", [transaction_id]))
        return Job.from_row(rows[0]) if rows else None

    def jobs(self, state: JobState | None = None, limit: int = 1000) -> list[Job]:
        where, args = ("state = ?", [state.value]) if state else (None, [])
        return [
            Job.from_row(r)
            for r in self.db.table("jobs").rows_where(where, args, order_by="id", limit=limit)
        ]

    def counts(self) -> dict[str, int]:
        return {
            row[0]: row[1] for row in self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        }

    # ------------------------------------------------------------------------- operator queries

    def _job_rows(self, sql: str, args: Iterable[Any]) -> list[Job]:
        cur = self.db.execute(sql, list(args))
        cols = [d[0] for d in cur.description]
        return [Job.from_row(dict(zip(cols, r, strict=True))) for r in cur.fetchall()]

    def recent_jobs(self, state: JobState | None = None, limit: int = 50) -> list[Job]:
        """Newest first: what an operator looking at `sfsign jobs` wants to see."""
        where, args = ("WHERE state = ?", [state.value]) if state else ("", [])
        return self._job_rows(f"SELECT * FROM jobs {where} ORDER BY id DESC LIMIT ?", [*args, limit])

    def oldest_active(self) -> Job | None:
        """The active job waiting longest: the first sign of a stuck queue."""
        states = [s.value for s in ACTIVE_STATES]
        rows = self._job_rows(
            f"SELECT * FROM jobs WHERE state IN ({', '.join('?' for _ in states)}) ORDER BY created_at, id LIMIT 1",
            states,
        )
        return rows[0] if rows else None

    def last_event(self) -> tuple[str, float] | None:
        """(channel, time) of the last event committed with a replay id, from the replay table."""
        row = self.db.execute(
            "SELECT channel, updated_at FROM replay WHERE updated_at IS NOT NULL ORDER BY updated_at DESC LIMIT 1"
        ).fetchone()
        return (str(row[0]), float(row[1])) if row else None

    def signed_visible_since(self, since: float) -> int:
        """Documents that reached `Signed` on their record at or after `since` (epoch seconds)."""
        row = self.db.execute("SELECT COUNT(*) FROM jobs WHERE signed_visible_at >= ?", (since,)).fetchone()
        return int(row[0])

    def job_states(self, transaction_ids: Iterable[str]) -> dict[str, tuple[JobState, float | None]]:
        """(state, done_at) per transaction id; ids without a job row are absent from the result."""
        out: dict[str, tuple[JobState, float | None]] = {}
        ids = list(dict.fromkeys(transaction_ids))
        for start in range(0, len(ids), 500):  # below SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            rows = self.db.execute(
                f"SELECT transaction_id, state, done_at FROM jobs WHERE transaction_id IN "
                f"({', '.join('?' for _ in chunk)})",
                chunk,
            ).fetchall()
            out.update({str(t): (JobState(s), float(d) if d is not None else None) for t, s, d in rows})
        return out

    def purge(self, now: float, retention_s: float, *, dry_run: bool = False) -> PurgeResult:
        """Delete finished (done/error/dead) jobs last changed more than `retention_s` ago, and the audit
        rows of jobs no longer kept that have left the audit queue (sent or refused).

        Data minimisation (GDPR): a job row names the record's file and the requester. Active jobs are
        never touched, and an audit row still waiting for Salesforce stays until it is sent. The memory of a
        record's current signed document (`signed_documents`, no personal data) stays, so a purged `done` row
        does not let the record be signed again on a new trigger; a superseded one goes.
        """
        if retention_s <= 0:
            raise ValueError("retention must be positive")
        cutoff = now - retention_s
        finished = [s.value for s in FINISHED_STATES]
        expired = f"state IN ({', '.join('?' for _ in finished)}) AND updated_at < ?"
        expired_args = [*finished, cutoff]
        orphan_audit = (
            "status != 'pending' AND (transaction_id NOT IN (SELECT transaction_id FROM jobs) "
            f"OR transaction_id IN (SELECT transaction_id FROM jobs WHERE {expired}))"
        )
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            jobs = {
                str(state): int(n)
                for state, n in conn.execute(f"SELECT state, COUNT(*) FROM jobs WHERE {expired} GROUP BY state",
                                             expired_args)
            }
            if dry_run:
                audit = int(conn.execute(f"SELECT COUNT(*) FROM audit WHERE {orphan_audit}", expired_args)
                            .fetchone()[0])
                conn.execute("ROLLBACK")
                return PurgeResult(jobs, audit)
            conn.execute(f"DELETE FROM jobs WHERE {expired}", expired_args)
            # A superseded document is no longer the record's: its memory goes like a finished job.
            conn.execute("DELETE FROM signed_documents WHERE superseded_by IS NOT NULL AND updated_at < ?", (cutoff,))
            audit = conn.execute(
                "DELETE FROM audit WHERE status != 'pending' "
                "AND transaction_id NOT IN (SELECT transaction_id FROM jobs)"
            ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return PurgeResult(jobs, int(audit))

    def requeue(self, job_id: int) -> Job:
        """Put an `error`/`dead` job back in the queue, keeping its artifacts and upload guard."""
        job = self.get(job_id)
        if job.state not in RETRYABLE_STATES:
            raise ValueError(f"job {job.transaction_id} is {job.state}, only error/dead jobs can be retried")
        if job.source != _ARCHIVE_SOURCE and job.duplicate_of is None:
            live = ", ".join("?" for _ in REENTRY_STATES)
            other = self.db.execute(
                f"SELECT transaction_id, state FROM jobs WHERE sobject = ? AND record_id = ? AND rule = ? "
                f"AND state NOT IN ({live}) AND source != ? AND duplicate_of IS NULL LIMIT 1",
                (job.sobject, job.record_id, job.rule, *[s.value for s in REENTRY_STATES], _ARCHIVE_SOURCE),
            ).fetchone()
            if other:  # the record was triggered again meanwhile: that job is the record's contract now
                raise ValueError(f"job {job.transaction_id} cannot be retried: the record has transaction "
                                 f"{other[0]} ({other[1]}) for rule {job.rule}")
            signed = self.signed_job(job.sobject, job.record_id, job.rule)
            if signed is not None and signed.transaction_id != job.transaction_id:  # its job row was purged
                raise ValueError(f"job {job.transaction_id} cannot be retried: the record was signed in transaction "
                                 f"{signed.transaction_id} for rule {job.rule}")
        resume = JobState.QUEUED
        if job.ltv_version_id:
            resume = JobState.LTV_UPLOADED  # the upgraded version is in Salesforce: only its write-back is left
        elif job.signed_visible_at and job.ltv_sha256:
            resume = JobState.LTV_UPGRADED
        elif job.signed_visible_at:
            resume = JobState.LTV_PENDING
        elif job.content_version_id:
            resume = JobState.UPLOADED  # the file is in Salesforce: only the write-back is left
        elif job.sha256:
            resume = JobState.SIGNED  # upload the document already signed, never sign a second one
        again = self.update(
            job_id, audit=False, state=resume, attempts=0, next_attempt_at=time.time(), last_error=None,
            error_code=None, failing_since=None,
        )
        self._audit(job_id, AUDIT_RETRIED, "sfsign retry", f"resumes at step {resume.value}")
        return again

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def meta_with_prefix(self, prefix: str) -> list[str]:
        rows = self.db.execute("SELECT key FROM meta WHERE key LIKE ? ORDER BY key", (prefix.replace("%", "") + "%",))
        return [str(r[0]) for r in rows.fetchall()]

    def delete_meta(self, key: str) -> None:
        self.db.execute("DELETE FROM meta WHERE key = ?", (key,))

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


class Outbox:
    """The async face of `OutboxStore`: every call runs on one dedicated thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sfsign-outbox")
        self._store: OutboxStore | None = None
        self._replay: dict[str, int] = {}

    async def open(self) -> None:
        self._store = await self._run(lambda: OutboxStore(self.path))
        rows = await self.call(lambda s: s.db.execute("SELECT channel, replay_id FROM replay").fetchall())
        self._replay = {str(c): int(r) for c, r in rows}

    def committed_replay_id(self, channel: str) -> int | None:
        """The last replay id committed for `channel` (cached; safe to call from the event loop)."""
        return self._replay.get(channel)

    @property
    def store(self) -> OutboxStore:
        if self._store is None:
            raise RuntimeError("outbox is not open")
        return self._store

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def call(self, fn: Callable[[OutboxStore], T]) -> T:
        store = self.store
        return await self._run(lambda: fn(store))

    async def commit_event(
        self, channel: str | None, replay_id: int | None, jobs: Iterable[NewJob], audit: Iterable[AuditEvent] = ()
    ) -> CommitResult:
        jobs, events = list(jobs), list(audit)
        result = await self.call(lambda s: s.commit_event(channel, replay_id, jobs, events))
        if channel is not None and replay_id is not None:
            self._replay[channel] = replay_id
        return result

    async def park_event(
        self, channel: str, replay_id: int | None, message: Any, reason: str, attempts: int
    ) -> ParkedEvent:
        parked = await self.call(lambda s: s.park_event(channel, replay_id, message, reason, attempts))
        if replay_id is not None:
            self._replay[channel] = replay_id
        return parked

    async def reset_replay(self, channel: str) -> None:
        await self.call(lambda s: s.reset_replay(channel))
        self._replay.pop(channel, None)

    async def update(self, job_id: int, **changes: Any) -> Job:
        return await self.call(lambda s: s.update(job_id, **changes))

    async def close(self) -> None:
        if self._store is not None:
            store = self._store
            await self._run(store.close)
            self._store = None
        self._executor.shutdown(wait=True)
