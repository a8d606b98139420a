"""What the outbox holds and hands out: job states, jobs, audit rows, and the results of its operations.

Plain values with no SQLite in them, so code that only reads jobs (the CLI, the metrics, the worker's
state machine) can name them without opening a database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Protocol


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
    # Customer signing (a rule with `signers:`): the envelope is out and nothing is to do until a signer acts
    # (never claimed); a recorded signature is not in the PDF yet (claimed); the envelope was refused,
    # expired or voided (final, no file; the same stage again starts a new transaction).
    AWAITING_SIGNATURES = "awaiting_signatures"
    SIGNATURES_DUE = "signatures_due"
    ENVELOPE_ENDED = "envelope_ended"


ACTIVE_STATES = (
    JobState.QUEUED,
    JobState.FETCHED,
    JobState.RENDERED,
    JobState.SIGNED,
    JobState.UPLOADED,
    JobState.LTV_PENDING,
    JobState.LTV_UPGRADED,
    JobState.LTV_UPLOADED,
    JobState.SIGNATURES_DUE,
)
# After these, the same record entering the trigger state again starts a new transaction.
REENTRY_STATES = (JobState.ERROR, JobState.DEAD, JobState.SKIPPED, JobState.ENVELOPE_ENDED)
# Of those, the ones `sfsign retry` puts back in the queue (a skipped job would only be skipped again).
RETRYABLE_STATES = (JobState.ERROR, JobState.DEAD)
# States whose document is on the record (or about to be, written back): a new trigger for the record
# and rule signs nothing, it is told "already signed" (see `OutboxStore.signed_job`).
SIGNED_STATES = (JobState.UPLOADED, JobState.LTV_PENDING, JobState.LTV_UPGRADED, JobState.LTV_UPLOADED,
                 JobState.DONE)
SIGNED_VALUES = frozenset(s.value for s in SIGNED_STATES)
REENTRY_VALUES = frozenset(s.value for s in REENTRY_STATES)
# Finished jobs: the only rows retention may delete. Active jobs are never purged, whatever their age.
FINISHED_STATES = (JobState.DONE, JobState.ERROR, JobState.DEAD, JobState.SKIPPED, JobState.ENVELOPE_ENDED)

# Jobs that renew the archive timestamp of a document already signed (sfsign/archive.py): they sit beside
# the record's `done` job, so the one-job-per-record index and the signed-document memory leave them out.
ARCHIVE_SOURCE = "ltv-refresh"
# A Re-issue request: signs a new version of a record already signed, superseding the signed job.
REISSUE_SOURCE = "reissue"


def audit_time(at: float | None = None) -> str:
    """An audit event's time as Salesforce takes a datetime: UTC, milliseconds, Z."""
    at = time.time() if at is None else at
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


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
class StepAudit:
    """The audit row a step's change of state writes, in the same transaction as the change.

    `occurred_at` and `sent` exist for a write-back whose event already went to Salesforce in the step's own
    call: the outbox keeps the same event with the same time, marked sent, so the relay never sends it twice.
    """

    detail: str | None = None
    occurred_at: str | None = None
    sent: bool = False


class SignatureEvidence(Protocol):
    """What the outbox keeps of a signature (`documents.jobs.SignedResult` is one): the record's fields
    and the audit trail are written from these, long after the signed PDF left the disk."""

    @property
    def sha256(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def signer_subject(self) -> str: ...
    @property
    def signer_serial(self) -> str: ...
    @property
    def signed_at(self) -> str: ...
    @property
    def timestamp_time(self) -> str | None: ...
    @property
    def validation(self) -> str: ...


class UpgradeEvidence(Protocol):
    """What the outbox keeps of a long-term validation upgrade (`documents.jobs.UpgradedResult` is one)."""

    @property
    def sha256(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def validation(self) -> str: ...
    @property
    def archive_due(self) -> str | None: ...


@dataclass(frozen=True)
class ParkedEvent:
    """An event intake gave up on: kept with its payload and reason so nothing is silently dropped."""

    id: int
    channel: str
    replay_id: int | str | None  # CometD's integer, or Pub/Sub's bytes in hex
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
    replay_id: int | str | None = None  # the event's position: CometD's integer, or Pub/Sub's bytes in hex
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
    # Customer signing: the signers resolved at fetch (JSON list of `ResolvedSigner`; None: a seal-only job),
    # when the envelope went out, and the certificate of completion (its hash, its ContentVersion).
    signers_json: str | None = None
    envelope_sent_at: float | None = None
    certificate_sha256: str | None = None
    certificate_version_id: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        names = _JOB_FIELDS.get(cls)
        if names is None:  # computed once per class: every step of every job builds a Job from its row
            names = _JOB_FIELDS[cls] = frozenset(f.name for f in fields(cls))
        data = {k: v for k, v in row.items() if k in names}
        data["state"] = JobState(data["state"])
        if len(data) < len(names):  # a partial row: the dataclass fills in the defaults (or says what is missing)
            return cls(**data)
        # A whole row, the usual case: set the fields at once. The frozen dataclass's `__init__` sets them one
        # `object.__setattr__` at a time, twice as slow, on every step of every job.
        job = object.__new__(cls)
        job.__dict__.update(data)
        return job


_JOB_FIELDS: dict[type, frozenset[str]] = {}


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


@dataclass(frozen=True)
class PurgeResult:
    """What a retention purge removed (or, dry run, would remove)."""

    jobs: dict[str, int]  # state -> rows
    audit_rows: int

    @property
    def job_rows(self) -> int:
        return sum(self.jobs.values())


@dataclass(frozen=True)
class OutboxStats:
    """What the scrape-time gauges show of the outbox (`sfsign.ops.metrics`)."""

    jobs_by_state: dict[str, int]
    signed_today: int
    parked_events: int = 0
    mails_pending: int = 0  # envelope mails queued for the relay
    oldest_mail_at: float | None = None  # when the oldest of them was queued
