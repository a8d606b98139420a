"""How jobs enter the queue: an event's jobs with its replay id, an archive renewal, a `sfsign retry` —
and the one-job-per-record rule that decides whether they may.

An event's jobs (and the audit rows of what it was refused) are written with the channel's new replay id
in one transaction, so after a crash either both exist or the event is replayed; a replayed event maps
onto the jobs it already created (the transaction id is derived from the trigger).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from sfsign.outbox.models import (
    ARCHIVE_SOURCE,
    REENTRY_STATES,
    REISSUE_SOURCE,
    RETRYABLE_STATES,
    SIGNED_STATES,
    AuditEvent,
    CommitResult,
    Job,
    JobState,
    NewJob,
    ParkedEvent,
    SignedDocument,
    StepAudit,
    audit_time,
)
from sfsign.outbox.steps import JobSteps
from sfsign.salesforce.events import ReplayId, replay_label
from sfsign.salesforce.names import AUDIT_RETRIED, AUDIT_SUPERSEDED, LONG_TEXT_WRITE_MAX

#: A channel's position, either transport's (schema `_replay_transport`): the row replaces the other's.
_UPSERT_REPLAY = (
    "INSERT INTO replay (channel, replay_id, pubsub_replay_id, transport, updated_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(channel) DO UPDATE SET replay_id = excluded.replay_id, pubsub_replay_id = excluded.pubsub_replay_id, "
    "transport = excluded.transport, updated_at = excluded.updated_at"
)


class IntakeStore(JobSteps):
    """Jobs in, replay positions, parked events, and the record's current signed document."""

    def commit_event(
        self, channel: str | None, replay_id: ReplayId | None, jobs: Iterable[NewJob],
        audit: Iterable[AuditEvent] = (),
    ) -> CommitResult:
        """Insert an event's jobs (and audit rows of what it was refused) and advance the channel's replay
        id, atomically."""
        now = time.time()
        created: list[Job] = []
        duplicates: list[tuple[NewJob, str]] = []
        with self._transaction() as conn:
            for job in jobs:
                outcome = self._insert_job(job, channel, replay_id, now)
                if isinstance(outcome, str):
                    duplicates.append((job, outcome))
                else:
                    created.append(outcome)
            for event in audit:
                conn.execute(
                    "INSERT INTO audit (transaction_id, sobject, record_id, event_type, occurred_at, actor, detail, "
                    "status) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                    (event.transaction_id, event.sobject, event.record_id, event.event_type, audit_time(now),
                     event.actor, event.detail[:LONG_TEXT_WRITE_MAX]),
                )
            self._set_replay(channel, replay_id, now)
        return CommitResult(created, duplicates)

    def _insert_job(self, job: NewJob, channel: str | None, replay_id: ReplayId | None, now: float) -> Job | str:
        """One job of an event, inside its transaction: the job created, or why it was not."""
        reason = self._duplicate_reason(job)
        superseded: SignedDocument | None = None
        if reason and job.source == REISSUE_SOURCE and not self.has_transaction(job.transaction_id):
            superseded = self.signed_job(job.sobject, job.record_id, job.rule)
            if superseded is not None:
                reason = None
            else:
                reason = f"{reason}: a signature is in progress; Re-issue once it is signed"
        if reason:
            return reason
        if superseded is not None:
            self._supersede(superseded, job, now)
        row = {
            "transaction_id": job.transaction_id, "rule": job.rule, "sobject": job.sobject,
            "record_id": job.record_id, "source": job.source, "state": JobState.QUEUED.value, "attempts": 0,
            "next_attempt_at": now, "created_at": now, "updated_at": now, "event_time_ms": job.event_time_ms,
            "requested_by": job.requested_by, "reason": job.reason, "channel": channel,
            "replay_id": _replay_note(replay_id),
            "upload_uncertain": 0,
        }
        cur = self.db.conn.execute(
            f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)}) ON CONFLICT DO NOTHING",
            list(row.values()),
        )
        if cur.rowcount == 0:  # the unique indexes caught what the check above did not
            return "the record already has a job for this rule (unique index)"
        detail = f"source: {job.source}, rule: {job.rule}"
        if superseded is not None:
            detail += f", supersedes transaction {superseded.transaction_id}"
        if job.reason:
            detail += f", reason: {job.reason}"
        self._audit(int(cur.lastrowid or 0), JobState.QUEUED.value, job.requested_by or "sfsign", detail)
        return Job.from_row({**row, "id": cur.lastrowid})

    def _supersede(self, superseded: SignedDocument, job: NewJob, now: float) -> None:
        """A Re-issue takes the record's slot: the signed job (or only its memory, once purged) is marked
        superseded, and its trail says by which transaction and why."""
        conn = self.db.conn
        if superseded.job_id is not None:
            conn.execute("UPDATE jobs SET superseded_by = ?, updated_at = ? WHERE id = ?",
                         (job.transaction_id, now, superseded.job_id))
        conn.execute("UPDATE signed_documents SET superseded_by = ?, updated_at = ? WHERE sobject = ? "
                     "AND record_id = ? AND rule = ? AND transaction_id = ?",
                     (job.transaction_id, now, job.sobject, job.record_id, job.rule, superseded.transaction_id))
        self._audit_row(superseded.transaction_id, job.sobject, job.record_id, AUDIT_SUPERSEDED,
                        job.requested_by or "sfsign",
                        f"Superseded by Re-issue transaction {job.transaction_id}; reason: "
                        f"{job.reason or '(none given)'}")

    def _set_replay(self, channel: str | None, replay_id: ReplayId | None, now: float) -> None:
        if channel is not None and replay_id is not None:
            self.db.conn.execute(_UPSERT_REPLAY, _replay_row(channel, replay_id, now))

    def park_event(
        self, channel: str, replay_id: ReplayId | None, message: Any, reason: str, attempts: int
    ) -> ParkedEvent:
        """Keep an event intake gives up on (its payload and why) and move the channel's replay id past
        it, atomically: the stream goes on, and the event stays for operators (`sfsign status`)."""
        now = time.time()
        payload = json.dumps(message, ensure_ascii=False, default=_json_value)
        note = _replay_note(replay_id)
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO parked_events (channel, replay_id, reason, attempts, parked_at, payload) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (channel, note, reason[:32000], attempts, now, payload),
            )
            self._set_replay(channel, replay_id, now)
        return ParkedEvent(int(cur.lastrowid or 0), channel, note, reason, attempts, now, payload)

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

    def replay_id(self, channel: str) -> ReplayId | None:
        """The channel's position: an int (CometD's) or bytes (Pub/Sub's), by the transport that wrote it."""
        return self.replay_ids().get(channel)

    def replay_ids(self) -> dict[str, ReplayId]:
        """Every channel's committed replay id (the async face caches them at open)."""
        rows = self.db.execute("SELECT channel, replay_id, pubsub_replay_id, transport FROM replay").fetchall()
        positions: dict[str, ReplayId] = {}
        for channel, cometd, pubsub, transport in rows:
            if transport == "pubsub" and pubsub:
                positions[str(channel)] = bytes(pubsub)
            elif transport != "pubsub" and cometd is not None:
                positions[str(channel)] = int(cometd)
        return positions

    def advance_replay_ids(self, positions: dict[str, ReplayId]) -> None:
        """Save replay ids of events that asked for nothing, never moving a channel back (a commit of a
        later event may have landed first). CometD's integers are compared; Pub/Sub's are opaque, so the
        order is the async face's: it drops a waiting position when the channel commits a later event, and
        runs every call on one thread in the order they were made."""
        now = time.time()
        with self._transaction() as conn:
            for channel, replay_id in positions.items():
                conn.execute(
                    _UPSERT_REPLAY + " WHERE excluded.transport = 'pubsub' OR replay.transport IS NOT 'cometd' "
                    "OR replay.replay_id IS NULL OR excluded.replay_id > replay.replay_id",
                    _replay_row(channel, replay_id, now),
                )

    def reset_replay(self, channel: str) -> None:
        self.db.execute("DELETE FROM replay WHERE channel = ?", (channel,))

    # ------------------------------------------------------------------- one contract per record and rule

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
            (sobject, record_id, rule, *states, ARCHIVE_SOURCE),
        )
        if rows:
            return SignedDocument.of_job(rows[0])
        row = self.db.execute(
            "SELECT transaction_id, signed_at, content_document_id FROM signed_documents WHERE sobject = ? "
            "AND record_id = ? AND rule = ? AND superseded_by IS NULL",
            (sobject, record_id, rule),
        ).fetchone()
        return SignedDocument(sobject, record_id, rule, str(row[0]), row[1], row[2]) if row else None

    def commit_unless_signed(
        self, channel: str | None, replay_id: ReplayId | None, jobs: list[NewJob], audit: list[AuditEvent],
        check: list[NewJob],
    ) -> CommitResult | None:
        """`commit_event`, unless a job of `check` is a new trigger for a record signed already
        (`signed_unless_known`): then nothing is committed and None returned, for intake to tell the rep first.
        The usual event (no such record) costs one call, not a look and then a commit."""
        with self._transaction():
            if any(self.signed_unless_known(job) is not None for job in check):
                return None
            return self.commit_event(channel, replay_id, jobs, audit)

    def signed_unless_known(self, job: NewJob) -> SignedDocument | None:
        """The record's signed document when `job` is a new trigger for it (not a replay of a known one, whose
        job row may be purged while the memory of its document is not)."""
        if self.has_transaction(job.transaction_id):
            return None
        signed = self.signed_job(job.sobject, job.record_id, job.rule)
        return None if signed is None or signed.transaction_id == job.transaction_id else signed

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
            (job.sobject, job.record_id, job.rule, *[s.value for s in REENTRY_STATES], ARCHIVE_SOURCE),
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

    # ----------------------------------------------------------------------- archive renewals, retries

    def add_archive_job(
        self, *, transaction_id: str, rule: str, sobject: str, record_id: str, content_document_id: str,
        content_version_id: str, source: str = ARCHIVE_SOURCE,
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
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE transaction_id = ?", (transaction_id,)).fetchone():
                return False
            cur = conn.execute(
                f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values())
            )
            self._audit(int(cur.lastrowid or 0), JobState.LTV_PENDING.value, "sfsign ltv-refresh",
                        f"archive timestamp renewal of file {content_document_id}")
        return True

    def requeue(self, job_id: int) -> Job:
        """Put an `error`/`dead` job back in the queue, keeping its artifacts and upload guard; its audit
        row (`retried`) goes in the same transaction."""
        job = self.get(job_id)
        if job.state not in RETRYABLE_STATES:
            raise ValueError(f"job {job.transaction_id} is {job.state}, only error/dead jobs can be retried")
        if job.source != ARCHIVE_SOURCE and job.duplicate_of is None:
            self._check_still_the_records(job)
        resume = _resume_state(job)
        return self._change(
            job_id, {"state": resume, "attempts": 0, "next_attempt_at": time.time(), "last_error": None,
                     "error_code": None, "failing_since": None},
            StepAudit(f"resumes at step {resume.value}"), event_type=AUDIT_RETRIED, actor="sfsign retry",
        )

    def _check_still_the_records(self, job: Job) -> None:
        """ValueError when the record has another contract for the rule now (a job or a signed document)."""
        live = ", ".join("?" for _ in REENTRY_STATES)
        other = self.db.execute(
            f"SELECT transaction_id, state FROM jobs WHERE sobject = ? AND record_id = ? AND rule = ? "
            f"AND state NOT IN ({live}) AND source != ? AND duplicate_of IS NULL LIMIT 1",
            (job.sobject, job.record_id, job.rule, *[s.value for s in REENTRY_STATES], ARCHIVE_SOURCE),
        ).fetchone()
        if other:  # the record was triggered again meanwhile: that job is the record's contract now
            raise ValueError(f"job {job.transaction_id} cannot be retried: the record has transaction "
                             f"{other[0]} ({other[1]}) for rule {job.rule}")
        signed = self.signed_job(job.sobject, job.record_id, job.rule)
        if signed is not None and signed.transaction_id != job.transaction_id:  # its job row was purged
            raise ValueError(f"job {job.transaction_id} cannot be retried: the record was signed in transaction "
                             f"{signed.transaction_id} for rule {job.rule}")


def _replay_row(channel: str, replay_id: ReplayId, now: float) -> tuple[Any, ...]:
    if isinstance(replay_id, bytes):
        return channel, None, replay_id, "pubsub", now
    return channel, int(replay_id), None, "cometd", now


def _replay_note(replay_id: ReplayId | None) -> int | str | None:
    """How a job or a parked event records the event's position (for people): bytes as `0x` hex."""
    return replay_label(replay_id) if isinstance(replay_id, bytes) else replay_id


def _json_value(value: Any) -> Any:
    """A parked message's JSON: a Pub/Sub replay id (bytes) as `0x` hex, anything else as text."""
    return replay_label(value) if isinstance(value, bytes) else str(value)


def _resume_state(job: Job) -> JobState:
    """Where a retried job starts again: past every step whose result is already in Salesforce."""
    if job.envelope_sent_at is not None:  # customer signing: never sign, send or upload anything twice
        if job.certificate_version_id:
            return JobState.UPLOADED  # both files are in Salesforce: only the write-back is left
        if job.ltv_sha256:
            return JobState.SIGNED  # completed: its uploads find what an earlier attempt uploaded
        return JobState.SIGNATURES_DUE  # applies what is signed, then waits, completes or ends with the envelope
    if job.ltv_version_id:
        return JobState.LTV_UPLOADED  # the upgraded version is in Salesforce: only its write-back is left
    if job.signed_visible_at and job.ltv_sha256:
        return JobState.LTV_UPGRADED
    if job.signed_visible_at:
        return JobState.LTV_PENDING
    if job.content_version_id:
        return JobState.UPLOADED  # the file is in Salesforce: only the write-back is left
    if job.sha256:
        return JobState.SIGNED  # upload the document already signed, never sign a second one
    return JobState.QUEUED
