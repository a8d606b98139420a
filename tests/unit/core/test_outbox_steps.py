"""The outbox's named job steps on a real SQLite file: each writes its state change and its audit row in one
transaction, and the async face has a twin of every store operation."""

from __future__ import annotations

import inspect
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from job_paths import SIGNED, UPGRADED, ltv_pending, signed, uploaded

from sfsign.outbox import (
    API_USAGE_KEY,
    FIRST_SUBSCRIBED_KEY,
    OPS_PROBE_KEY,
    RECONCILE_PREFIX,
    Job,
    JobState,
    NewJob,
    Outbox,
    OutboxStore,
    StepAudit,
)
from sfsign.outbox import meta as meta_keys
from sfsign.outbox.meta import reconcile_since


def _store(tmp_path: Path) -> OutboxStore:
    return OutboxStore(tmp_path / "o.sqlite")


def _queued(store: OutboxStore, tx: str = "tx-1", record: str = "006000000000001AAA") -> Job:
    return store.commit_event(None, None, [NewJob(tx, "r", "Opportunity", record, "cdc")]).created[0]


def _trail(store: OutboxStore, job: Job) -> list[tuple[str, str, str]]:
    """(event type, detail, status) of the job's audit rows, oldest first."""
    rows = store.db.execute("SELECT event_type, detail, status FROM audit WHERE transaction_id = ? ORDER BY id",
                            (job.transaction_id,)).fetchall()
    return [(str(e), str(d), str(s)) for e, d, s in rows]


def test_a_b_t_document_moves_by_named_steps_each_with_its_audit_row(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job = _queued(store)
    job = store.mark_fetched(job, document_json='{"lines": []}', file_title="Quote 7", file_name="Quote_7.pdf")
    assert (job.state, job.document_json, job.file_title, job.file_name) == (
        JobState.FETCHED, '{"lines": []}', "Quote 7", "Quote_7.pdf")
    job = store.mark_rendered(job)
    job = store.mark_signed(job, SIGNED, "PAdES B-T, eIDAS advanced (declared)")
    assert (job.state, job.sha256, job.level, job.signer_subject, job.signer_serial, job.signed_at,
            job.timestamp_time, job.validation) == (JobState.SIGNED, SIGNED.sha256, "B-T", "CN=Seller", "0f",
                                                     SIGNED.signed_at, SIGNED.timestamp_time, "valid")
    assert store.set_upload_uncertain(job, True).upload_uncertain == 1
    job = store.mark_uploaded(job, "068000000000001AAA")
    assert (job.state, job.content_version_id, job.upload_uncertain) == (JobState.UPLOADED, "068000000000001AAA", 0)
    job = store.mark_done(job, StepAudit("Signed; file 069000000000001AAA"), at=1_800_000_000.0, signed_visible=True,
                          document_id="069000000000001AAA")

    assert (job.state, job.done_at, job.signed_visible_at, job.document_json, job.last_error) == (
        JobState.DONE, 1_800_000_000.0, 1_800_000_000.0, None, None)
    assert job.content_document_id == "069000000000001AAA"
    assert _trail(store, job) == [
        ("queued", "source: cdc, rule: r", "pending"),
        ("fetched", "", "pending"),
        ("rendered", "", "pending"),
        ("signed", "PAdES B-T, eIDAS advanced (declared)", "pending"),
        ("uploaded", "ContentVersion 068000000000001AAA", "pending"),
        ("done", "Signed; file 069000000000001AAA", "pending"),
    ]
    signed = store.signed_job("Opportunity", job.record_id, "r")
    assert signed is not None and signed.content_document_id == "069000000000001AAA"


def test_a_long_term_upgrade_keeps_the_time_the_record_first_showed_signed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job = uploaded(store, _queued(store))
    walked = len(_trail(store, job))  # the setup's rows, up to `uploaded`
    occurred = "2026-03-14T15:00:02.000Z"
    job = store.mark_ltv_pending(job, StepAudit("Signed; upgrade to B-LTA pending", occurred, sent=True),
                                 visible_at=1_800_000_000.0, upgrade_at=1_800_000_060.0,
                                 document_id="069000000000001AAA")
    assert (job.state, job.signed_visible_at, job.next_attempt_at, job.attempts, job.content_document_id) == (
        JobState.LTV_PENDING, 1_800_000_000.0, 1_800_000_060.0, 0, "069000000000001AAA")
    assert store.defer(job, 1_800_000_900.0).next_attempt_at == 1_800_000_900.0
    job = store.mark_ltv_upgraded(job, UPGRADED)
    assert (job.state, job.ltv_sha256, job.ltv_level, job.validation, job.archive_due) == (
        JobState.LTV_UPGRADED, UPGRADED.sha256, "B-LTA", "valid, LTV", "2036-03-14T00:00:00Z")
    job = store.mark_ltv_uploaded(job, "068000000000002AAA")
    job = store.mark_done(job, StepAudit("PAdES B-LTA on the record"))

    assert job.state is JobState.DONE and job.signed_visible_at == 1_800_000_000.0
    trail = _trail(store, job)[walked - 1:]
    assert trail[1] == ("ltv_pending", "Signed; upgrade to B-LTA pending", "sent")  # went with the write-back
    assert store.db.execute("SELECT occurred_at FROM audit WHERE event_type = 'ltv_pending'").fetchone()[0] == occurred
    assert trail[2:] == [
        ("ltv_upgraded", f"PAdES B-LTA, SHA-256 {UPGRADED.sha256}, validation: valid, LTV, archive timestamp due "
                         "2036-03-14T00:00:00Z", "pending"),
        ("ltv_uploaded", "ContentVersion 068000000000002AAA (PAdES B-LTA)", "pending"),
        ("done", "PAdES B-LTA on the record", "pending"),
    ]


def test_files_found_in_salesforce_are_used_and_lost_files_are_made_again(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = signed(store, _queued(store, "tx-1", "006000000000001AAA"))
    found = store.mark_upload_found(first, "068000000000001AAA", "069000000000001AAA")
    assert (found.state, found.content_version_id, found.content_document_id) == (
        JobState.UPLOADED, "068000000000001AAA", "069000000000001AAA")

    second = _queued(store, "tx-2", "006000000000002AAA")
    adopted = store.mark_adopted(second, version_id="068000000000003AAA", document_id="069000000000003AAA",
                                 detail="already in Salesforce: not signed again")
    assert adopted.state is JobState.DONE and adopted.done_at == adopted.signed_visible_at is not None
    assert _trail(store, adopted)[-1] == ("done", "already in Salesforce: not signed again", "pending")

    third = signed(store, _queued(store, "tx-3", "006000000000003AAA"))
    assert third.sha256 is not None
    assert store.redo_from_fetched(third, drop_signature=True).sha256 is None
    fourth = store.mark_ltv_upgraded(ltv_pending(store, _queued(store, "tx-4", "006000000000004AAA")), UPGRADED)
    redone = store.redo_ltv_upgrade(fourth)
    assert (redone.state, redone.ltv_sha256) == (JobState.LTV_PENDING, None)
    uploaded = store.mark_ltv_upload_found(redone, "068000000000004AAA")
    assert (uploaded.state, uploaded.ltv_version_id) == (JobState.LTV_UPLOADED, "068000000000004AAA")


def test_failures_keep_their_reason_and_only_final_ones_write_an_audit_row(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job = _queued(store)
    job = store.schedule_retry(job, time.time() + 30, "HTTP 503", "UNAVAILABLE", attempts=1, failing_since=1.0)
    assert (job.state, job.attempts, job.last_error, job.error_code, job.failing_since) == (
        JobState.QUEUED, 1, "HTTP 503", "UNAVAILABLE", 1.0)
    assert store.reset_retry_window(job).failing_since is None
    noted = store.note_failure(job, "no line items", "NOT_RENDERABLE")
    assert (noted.state, noted.last_error) == (JobState.QUEUED, "no line items")
    assert len(_trail(store, job)) == 1  # only `queued`: none of these changed the state

    error = store.mark_error(job, "no line items", "NOT_RENDERABLE")
    assert (error.state, error.error_code) == (JobState.ERROR, "NOT_RENDERABLE")
    dead_job = _queued(store, "tx-2", "006000000000002AAA")
    dead = store.mark_dead(dead_job, attempts=9, message="Gave up after 9 attempts", reason="HTTP 503",
                           code="UNAVAILABLE")
    assert (dead.state, dead.attempts, dead.last_error) == (JobState.DEAD, 9, "Gave up after 9 attempts")
    skipped = store.mark_skipped(_queued(store, "tx-3", "006000000000003AAA"), "record type Renewal not covered")

    assert _trail(store, error)[-1] == ("error", "NOT_RENDERABLE: no line items", "pending")
    assert _trail(store, dead)[-1] == ("dead", "UNAVAILABLE: HTTP 503", "pending")
    assert _trail(store, skipped)[-1] == ("skipped", "record type Renewal not covered", "pending")
    assert skipped.done_at is not None


def test_requeue_writes_its_retried_row_with_the_state_change(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job = store.mark_error(_queued(store), "boom", "SALESFORCE")
    again = store.requeue(job.id)
    assert again.state is JobState.QUEUED
    assert _trail(store, again)[-1] == ("retried", "resumes at step queued", "pending")
    actor = store.db.execute("SELECT actor FROM audit ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert actor == "sfsign retry"


def _refuse_audit_rows(store: OutboxStore) -> None:
    """A failure between a job's change and its audit row: SQLite itself refuses every audit insert."""
    store.db.execute("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'no audit'); END")


STEPS_WITH_AUDIT: dict[str, Callable[[OutboxStore, Job], object]] = {
    "mark_fetched": lambda s, j: s.mark_fetched(j, document_json="{}", file_title="t", file_name="t.pdf"),
    "mark_rendered": lambda s, j: s.mark_rendered(j),
    "mark_signed": lambda s, j: s.mark_signed(j, SIGNED, "signed"),
    "mark_uploaded": lambda s, j: s.mark_uploaded(j, "068000000000001AAA"),
    "mark_upload_found": lambda s, j: s.mark_upload_found(j, "068000000000001AAA", "069000000000001AAA"),
    "mark_done": lambda s, j: s.mark_done(j, StepAudit("Signed"), signed_visible=True),
    "mark_ltv_pending": lambda s, j: s.mark_ltv_pending(j, StepAudit("Signed"), visible_at=1.0, upgrade_at=2.0),
    "mark_adopted": lambda s, j: s.mark_adopted(j, version_id="068000000000001AAA", document_id=None, detail="x"),
    "mark_ltv_upgraded": lambda s, j: s.mark_ltv_upgraded(j, UPGRADED),
    "mark_ltv_uploaded": lambda s, j: s.mark_ltv_uploaded(j, "068000000000002AAA"),
    "mark_skipped": lambda s, j: s.mark_skipped(j, "not covered"),
    "mark_error": lambda s, j: s.mark_error(j, "boom", "X"),
    "mark_dead": lambda s, j: s.mark_dead(j, attempts=3, message="gave up", reason="boom", code="X"),
    "redo_from_fetched": lambda s, j: s.redo_from_fetched(j, drop_signature=True),
}


@pytest.mark.parametrize("step", sorted(STEPS_WITH_AUDIT))
def test_a_step_whose_audit_row_fails_leaves_neither_with_failing_audit_insert(tmp_path: Path, step: str) -> None:
    store = _store(tmp_path)
    job = _queued(store)
    _refuse_audit_rows(store)
    with pytest.raises(sqlite3.DatabaseError, match="no audit"):
        STEPS_WITH_AUDIT[step](store, job)
    assert store.get(job.id) == job  # not one column changed
    assert store.db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 1  # the `queued` row alone
    assert store.db.execute("SELECT COUNT(*) FROM signed_documents").fetchone()[0] == 0


def test_requeue_whose_audit_row_fails_stays_failed_with_failing_audit_insert(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job = store.mark_error(_queued(store), "boom", "X")
    _refuse_audit_rows(store)
    with pytest.raises(sqlite3.DatabaseError, match="no audit"):
        store.requeue(job.id)
    assert store.get(job.id) == job


def test_steps_without_a_change_of_state_write_no_audit_row_with_failing_audit_insert(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job = _queued(store)
    _refuse_audit_rows(store)
    store.schedule_retry(job, 5.0, "HTTP 503", "UNAVAILABLE", attempts=1, failing_since=1.0)
    store.note_failure(job, "boom", "X")
    store.reset_retry_window(job)
    store.defer(job, 9.0)
    store.set_upload_uncertain(job, True)
    assert store.get(job.id).next_attempt_at == 9.0


def test_the_async_face_has_a_twin_of_every_store_operation() -> None:
    """Async code never needs the store itself: each public store method has a coroutine of the same name
    on `Outbox`, taking the same parameters."""
    skip = {"close"}  # the async face closes its thread too: `Outbox.close` is its own
    store_ops = {name for name, fn in inspect.getmembers(OutboxStore, inspect.isfunction)
                 if not name.startswith("_") and name not in skip}
    for name in sorted(store_ops):
        twin = getattr(Outbox, name, None)
        assert twin is not None and inspect.iscoroutinefunction(twin), f"Outbox.{name} is missing"
        sync_params = list(inspect.signature(getattr(OutboxStore, name)).parameters)[1:]
        assert list(inspect.signature(twin).parameters)[1:] == sync_params, name


async def test_async_steps_run_on_the_outbox_thread(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    await outbox.open()
    try:
        [job] = (await outbox.commit_event(None, None, [NewJob("tx-1", "r", "Opportunity", "006000000000001AAA",
                                                               "cdc")])).created
        job = await outbox.mark_fetched(job, document_json="{}", file_title="t", file_name="t.pdf")
        job = await outbox.mark_rendered(job)
        job = await outbox.mark_signed(job, SIGNED, "signed")
        assert (await outbox.get(job.id)).state is JobState.SIGNED
        assert [r["event_type"] for r in await outbox.pending_audit()] == ["queued", "fetched", "rendered", "signed"]
    finally:
        await outbox.close()


def test_meta_keys_keep_the_values_outboxes_already_hold() -> None:
    """Outboxes written by earlier versions hold these keys: renaming one would lose what it remembers."""
    assert (FIRST_SUBSCRIBED_KEY, OPS_PROBE_KEY, RECONCILE_PREFIX, API_USAGE_KEY) == (
        "first_subscribed_at", "ops_write_probe", "reconcile:", "api_usage")
    keys = meta_keys.ALL_KEYS
    assert len(set(keys)) == len(keys)
    assert not [k for k in keys for p in meta_keys.ALL_PREFIXES if k.startswith(p)]  # no key hides in a prefix


def test_meta_helpers_write_under_their_keys(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.mark_first_subscribed("2026-03-14T15:00:00+00:00")
    store.mark_first_subscribed("2026-03-15T15:00:00+00:00")
    assert store.get_meta(FIRST_SUBSCRIBED_KEY) == store.first_subscribed_at() == "2026-03-14T15:00:00+00:00"
    store.probe_write()
    assert store.get_meta(OPS_PROBE_KEY) is not None
    store.request_reconcile("Quote", "2026-03-14T15:00:01+00:00")
    store.request_reconcile("Opportunity", "2026-03-14T15:00:02+00:00")
    assert store.meta_with_prefix(RECONCILE_PREFIX) == ["reconcile:Opportunity", "reconcile:Quote"]
    assert store.pending_reconciles() == {"Opportunity": "2026-03-14T15:00:02+00:00",
                                          "Quote": "2026-03-14T15:00:01+00:00"}
    assert store.reconcile_done("Quote", "2026-03-14T15:00:01+00:00")
    assert list(store.pending_reconciles()) == ["Opportunity"]


def test_a_reconcile_request_made_during_the_pass_survives_the_pass_being_done(tmp_path: Path) -> None:
    """The pass answers the request it read; one made after its query (a later stream gap) stays pending."""
    store = _store(tmp_path)
    store.request_reconcile("Opportunity", "2026-03-14T15:00:01+00:00")
    read = store.pending_reconciles()["Opportunity"]
    store.request_reconcile("Opportunity", "2026-03-14T15:00:05+00:00")  # while the pass runs
    assert not store.reconcile_done("Opportunity", read)
    assert store.pending_reconciles() == {"Opportunity": "2026-03-14T15:00:05+00:00"}
    assert store.reconcile_done("Opportunity", "2026-03-14T15:00:05+00:00")
    assert store.pending_reconciles() == {}


def test_reconcile_requests_merge_to_the_widest_bound(tmp_path: Path) -> None:
    """A stream gap asks only for records changed since the process started; any request for all wins."""
    store = _store(tmp_path)
    early, late = datetime(2026, 12, 6, 0, 0, tzinfo=UTC), datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
    store.request_reconcile("Quote", "2026-12-06T02:00:00+00:00", late)
    store.request_reconcile("Quote", "2026-12-06T02:00:01+00:00", early)
    store.request_reconcile("Quote", "2026-12-06T02:00:02+00:00", late)
    assert reconcile_since(store.pending_reconciles()["Quote"]) == early
    store.request_reconcile("Quote", "2026-12-06T02:00:03+00:00")
    store.request_reconcile("Quote", "2026-12-06T02:00:04+00:00", late)
    assert reconcile_since(store.pending_reconciles()["Quote"]) is None
    store.set_meta("reconcile:Opportunity", "2026-03-14T15:00:00+00:00")  # as written before bounds existed
    assert reconcile_since(store.pending_reconciles()["Opportunity"]) is None
