"""The SQLite outbox: jobs, their states, their audit trail, and the replay position of every channel.

The outbox is what makes sfsign exactly-once. An event's jobs and the channel's new replay id are
written in one SQLite transaction, so after a crash either both exist or the event is replayed; the
transaction id is derived from the trigger, so a replayed event maps onto the job it already created.
A job moves by named steps (`OutboxStore.mark_signed`, …), each writing its state change and its audit
row in one transaction. All access goes through one thread (`Outbox`): SQLite serialises writers anyway,
and the event loop never waits on disk.

Modules: `models` (states, jobs, results), `schema` (tables, migrations), `signed_memory` (the record's
current document, kept past the purge), `changes` (the one write path), `steps` (named job steps),
`intake` (jobs in, one per record), `store` (`OutboxStore`: queues, reads, retention, meta), `meta` (the
meta table's keys), `async_face` (`Outbox`); customer signing's `envelope_*` modules (`envelope_jobs`: a job's
moves with its envelope).
"""

from sfsign.outbox.async_face import Outbox
from sfsign.outbox.meta import API_USAGE_KEY, FIRST_SUBSCRIBED_KEY, OPS_PROBE_KEY, RECONCILE_PREFIX
from sfsign.outbox.models import (
    ACTIVE_STATES,
    ARCHIVE_SOURCE,
    FINISHED_STATES,
    REENTRY_STATES,
    REENTRY_VALUES,
    REISSUE_SOURCE,
    RETRYABLE_STATES,
    SIGNED_STATES,
    SIGNED_VALUES,
    AuditEvent,
    CommitResult,
    Job,
    JobState,
    NewJob,
    OutboxStats,
    ParkedEvent,
    PurgeResult,
    SignatureEvidence,
    SignedDocument,
    StepAudit,
    UpgradeEvidence,
    audit_time,
)
from sfsign.outbox.store import OutboxStore

__all__ = [
    "ACTIVE_STATES", "API_USAGE_KEY", "ARCHIVE_SOURCE", "FINISHED_STATES", "FIRST_SUBSCRIBED_KEY", "OPS_PROBE_KEY",
    "RECONCILE_PREFIX", "REENTRY_STATES", "REENTRY_VALUES", "REISSUE_SOURCE", "RETRYABLE_STATES", "SIGNED_STATES",
    "SIGNED_VALUES", "AuditEvent", "CommitResult", "Job", "JobState", "NewJob", "Outbox", "OutboxStats",
    "OutboxStore", "ParkedEvent", "PurgeResult", "SignatureEvidence", "SignedDocument", "StepAudit",
    "UpgradeEvidence", "audit_time",
]
