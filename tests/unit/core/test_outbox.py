"""Outbox transitions on a real SQLite file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from job_paths import UPGRADED, ltv_pending, uploaded

from sfsign.outbox import JobState, NewJob, Outbox, OutboxStore, StepAudit, audit_time


def _job(tx: str = "tx-1", record: str = "006000000000001AAA", rule: str = "r") -> NewJob:
    return NewJob(transaction_id=tx, rule=rule, sobject="Opportunity", record_id=record, source="cdc",
                  event_time_ms=1_700_000_000_000)


def test_event_jobs_and_replay_id_commit_together(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    result = store.commit_event("/data/OpportunityChangeEvent", 41, [_job()])
    assert [j.transaction_id for j in result.created] == ["tx-1"]
    assert store.replay_id("/data/OpportunityChangeEvent") == 41
    job = store.by_transaction("tx-1")
    assert job is not None and job.state is JobState.QUEUED and job.replay_id == 41


def test_failed_commit_rolls_back_the_replay_id(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    store.commit_event("/c", 1, [])

    bad = _job()
    object.__setattr__(bad, "rule", None)  # NOT NULL violation inside the transaction
    with pytest.raises(Exception):  # noqa: B017 - sqlite3.IntegrityError
        store.commit_event("/c", 2, [_job("ok", record="006000000000002AAA"), bad])
    assert store.replay_id("/c") == 1
    assert store.by_transaction("ok") is None


def test_replayed_event_is_a_noop(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    store.commit_event("/c", 1, [_job()])
    again = store.commit_event("/c", 1, [_job()])
    assert again.created == [] and "already exists" in again.duplicates[0][1]
    assert store.counts() == {"queued": 1}


def test_second_trigger_for_an_active_record_is_a_noop_but_reentry_after_error_is_not(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    first = store.commit_event("/c", 1, [_job("tx-1")]).created[0]
    dup = store.commit_event("/c", 2, [_job("tx-2")])
    assert dup.created == [] and "already has transaction tx-1" in dup.duplicates[0][1]
    store.mark_error(first, "no line items", "NOT_RENDERABLE")
    again = store.commit_event("/c", 3, [_job("tx-3")])
    assert [j.transaction_id for j in again.created] == ["tx-3"]


def test_claim_due_respects_time_and_exclusions(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    a = store.commit_event(None, None, [_job("a", record="006000000000001AAA")]).created[0]
    b = store.commit_event(None, None, [_job("b", record="006000000000002AAA")]).created[0]
    store.defer(b, time.time() + 3600)
    assert [j.transaction_id for j in store.claim_due(time.time(), 10)] == ["a"]
    assert store.claim_due(time.time(), 10, exclude=[a.id]) == []
    store.mark_done(a, StepAudit())
    assert store.claim_due(time.time() + 7200, 10)[0].transaction_id == "b"


def test_requeue_only_error_or_dead_and_resume_after_upload(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    job = store.commit_event(None, None, [_job()]).created[0]
    with pytest.raises(ValueError, match="only error/dead"):
        store.requeue(job.id)
    job = store.schedule_retry(uploaded(store, job), time.time(), "HTTP 503", "UNAVAILABLE", attempts=8,
                               failing_since=time.time() - 73 * 3600)
    store.mark_dead(job, attempts=8, message="Gave up after 8 attempts", reason="HTTP 503", code="UNAVAILABLE")
    again = store.requeue(job.id)
    assert again.state is JobState.UPLOADED and again.attempts == 0
    assert again.failing_since is None  # a retried job gets a whole new retry window


@pytest.mark.parametrize(
    ("upgrade_steps", "resumes_at"),
    [(0, JobState.LTV_PENDING), (1, JobState.LTV_UPGRADED), (2, JobState.LTV_UPLOADED)],
)
def test_requeue_of_a_failed_long_term_upgrade_never_signs_or_uploads_the_first_file_again(
    tmp_path: Path, upgrade_steps: int, resumes_at: JobState
) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    job = ltv_pending(store, store.commit_event(None, None, [_job()]).created[0])  # shown Signed at B-T
    if upgrade_steps >= 1:
        job = store.mark_ltv_upgraded(job, UPGRADED)
    if upgrade_steps >= 2:
        job = store.mark_ltv_uploaded(job, "068000000000002AAA")
    store.mark_error(job, "the upgrade failed", "LTV_FAILED")
    assert store.requeue(job.id).state is resumes_at


def test_outbox_of_an_older_version_gains_the_new_columns_and_keeps_its_jobs(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "o.sqlite"
    old = sqlite3.connect(path)  # the jobs table as the first release wrote it
    old.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, transaction_id TEXT NOT NULL, rule TEXT NOT NULL, "
                "sobject TEXT NOT NULL, record_id TEXT NOT NULL, source TEXT, state TEXT NOT NULL, "
                "attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at FLOAT, created_at FLOAT, updated_at FLOAT, "
                "upload_uncertain INTEGER DEFAULT 0, sha256 TEXT)")
    old.execute("INSERT INTO jobs (transaction_id, rule, sobject, record_id, source, state, next_attempt_at) "
                "VALUES ('tx-old', 'r', 'Opportunity', '006000000000001AAA', 'cdc', 'signed', 0)")
    old.commit()
    old.close()
    store = OutboxStore(path)
    job = store.by_transaction("tx-old")
    assert job is not None and job.state is JobState.SIGNED and job.ltv_level is None
    assert store.mark_ltv_upgraded(job, UPGRADED).ltv_level == "B-LTA"
    assert job.failing_since is None and job.file_title is None  # the retry window's start, the file's title
    retrying = store.schedule_retry(job, 0.0, "HTTP 503", "UNAVAILABLE", attempts=1, failing_since=12.5)
    assert retrying.failing_since == 12.5
    fetched = store.mark_fetched(job, document_json="{}", file_title="Proposal 🚀", file_name="Proposal.pdf")
    assert fetched.file_title == "Proposal 🚀"


def test_outbox_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    store = OutboxStore(path)
    store.commit_event("/c", 7, [_job()])
    store.close()
    reopened = OutboxStore(path)
    assert reopened.replay_id("/c") == 7 and reopened.by_transaction("tx-1") is not None


async def test_async_outbox_caches_committed_replay_ids(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    await outbox.open()
    try:
        assert outbox.committed_replay_id("/c") is None
        await outbox.commit_event("/c", 12, [_job()])
        assert outbox.committed_replay_id("/c") == 12
        await outbox.reset_replay("/c")
        assert outbox.committed_replay_id("/c") is None
        assert await outbox.call(lambda s: s.replay_id("/c")) is None
    finally:
        await outbox.close()


def test_next_due_ignores_the_jobs_already_running(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    first = store.commit_event("/c", 1, [_job("tx-a", record="006000000000001AAA")]).created[0]
    later = store.commit_event("/c", 2, [_job("tx-b", record="006000000000002AAA")]).created[0]
    store.defer(later, time.time() + 60)
    assert store.next_due_at() == pytest.approx(first.next_attempt_at)
    assert store.next_due_at(exclude=[first.id]) == pytest.approx(time.time() + 60, abs=5)
    assert store.next_due_at(exclude=[first.id, later.id]) is None


def test_pending_audit_can_leave_out_the_rows_of_jobs_still_running(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    early = uploaded(store, store.commit_event("/c", 1, [_job()]).created[0])
    sent = uploaded(store, store.commit_event("/c", 2, [_job("tx-2", record="006000000000002AAA")]).created[0])
    store.db.execute("UPDATE audit SET status = 'sent'")  # the trail so far is in Salesforce
    store.mark_done(early, StepAudit("signed a while ago", audit_time(time.time() - 120)))
    store.mark_error(store.commit_event("/c", 3, [_job("tx-3", record="006000000000003AAA")]).created[0],
                     "no line items", "NOT_RENDERABLE")
    store.mark_done(sent, StepAudit("went with the write-back", sent=True))
    assert [r["event_type"] for r in store.pending_audit()] == ["done", "queued", "error"]
    old = store.pending_audit(older_than=audit_time(time.time() - 60))
    assert [r["event_type"] for r in old] == ["done"]
