"""The signed-document memory: written with the job state that makes a record signed, superseded by a
Re-issue, kept by the purge while it is current, and filled from the signed jobs of an older outbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from job_paths import done, rendered, uploaded

from sfsign.outbox import NewJob, OutboxStore

OPP = "006Dn0000000001IAA"
DAY = 86400.0


def _job(tx: str, source: str = "cdc", rule: str = "r") -> NewJob:
    return NewJob(transaction_id=tx, rule=rule, sobject="Opportunity", record_id=OPP, source=source,
                  requested_by="005Dn0000000001IAA")


def _sign(store: OutboxStore, tx: str, source: str = "cdc") -> None:
    created = store.commit_event(None, None, [_job(tx, source)]).created
    assert [j.transaction_id for j in created] == [tx]
    done(store, created[0], document_id="069Dn0000000001IAA", signed_at="2026-01-02T03:04:05.000Z",
         version="068Dn0000000001IAA")


def _memory(store: OutboxStore) -> list[tuple[object, ...]]:
    return [tuple(r) for r in store.db.execute(
        "SELECT rule, transaction_id, signed_at, content_document_id, superseded_by FROM signed_documents "
        "ORDER BY rule").fetchall()]


def test_the_memory_names_no_person(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    columns = {c.name for c in store.db.table("signed_documents").columns}
    assert columns == {"sobject", "record_id", "rule", "transaction_id", "signed_at", "content_document_id",
                       "superseded_by", "updated_at"}


def test_a_signed_record_stays_signed_after_its_job_row_is_purged(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    _sign(store, "tx-1")
    assert _memory(store) == [("r", "tx-1", "2026-01-02T03:04:05.000Z", "069Dn0000000001IAA", None)]
    result = store.purge(store_now(store) + 400 * DAY, 30 * DAY)
    assert result.job_rows == 1 and store.jobs() == []
    signed = store.signed_job("Opportunity", OPP, "r")
    assert signed is not None and signed.transaction_id == "tx-1" and signed.job_id is None
    assert signed.signed_at == "2026-01-02T03:04:05.000Z" and signed.content_document_id == "069Dn0000000001IAA"
    # A new trigger that reaches the outbox (a reconciliation, say) is a duplicate, not a second contract.
    again = store.commit_event(None, None, [_job("tx-2")])
    assert not again.created and "already signed in transaction tx-1" in again.duplicates[0][1]
    assert store.signed_job("Opportunity", OPP, "other-rule") is None


def test_a_reissue_after_the_purge_supersedes_the_remembered_document_and_becomes_it(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    _sign(store, "tx-1")
    store.purge(store_now(store) + 400 * DAY, 30 * DAY)
    result = store.commit_event(None, None, [_job("tx-2", source="reissue")])
    assert [j.transaction_id for j in result.created] == ["tx-2"]
    assert _memory(store)[0][1] == "tx-1" and _memory(store)[0][4] == "tx-2"
    assert store.signed_job("Opportunity", OPP, "r") is None  # superseded: the Re-issue is in flight
    superseded = store.db.execute(
        "SELECT transaction_id, detail FROM audit WHERE event_type = 'superseded'").fetchall()
    assert [(tx, "tx-2" in detail) for tx, detail in superseded] == [("tx-1", True)]
    job = store.by_transaction("tx-2")
    assert job is not None
    uploaded(store, job, signed_at="2026-02-02T00:00:00.000Z")
    assert _memory(store) == [("r", "tx-2", "2026-02-02T00:00:00.000Z", None, None)]


def test_a_superseded_memory_goes_with_the_purge_and_a_current_one_never(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    _sign(store, "tx-1")
    store.commit_event(None, None, [_job("tx-2", source="reissue")])
    job = store.by_transaction("tx-2")
    assert job is not None
    store.mark_error(job, "no line items", "NOT_RENDERABLE")  # the Re-issue failed: tx-1 stays superseded
    store.purge(store_now(store) + 400 * DAY, 30 * DAY)
    assert _memory(store) == []
    _sign(store, "tx-3")
    store.purge(store_now(store) + 4000 * DAY, 30 * DAY)
    assert [m[1] for m in _memory(store)] == ["tx-3"]


def test_a_job_that_fails_after_upload_is_no_longer_the_records_document(tmp_path: Path) -> None:
    """As before the memory: a record whose job ended `error`/`dead` may be triggered again (re-entry)."""
    store = OutboxStore(tmp_path / "o.sqlite")
    job = store.commit_event(None, None, [_job("tx-1")]).created[0]
    job = uploaded(store, job, "068Dn0000000001IAA")
    assert [m[1] for m in _memory(store)] == ["tx-1"]
    store.mark_error(job, "refused", "INVALID_FIELD")
    assert _memory(store) == [] and store.signed_job("Opportunity", OPP, "r") is None
    store.requeue(job.id)  # resumes at `uploaded`: the record's document again
    assert [m[1] for m in _memory(store)] == ["tx-1"]


def test_retry_refuses_a_failed_job_of_a_record_signed_since_whose_row_was_purged(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    failed = store.commit_event(None, None, [_job("tx-1")]).created[0]
    store.mark_error(failed, "not found", "NOT_FOUND")
    _sign(store, "tx-2")
    store.db.execute("DELETE FROM jobs WHERE transaction_id = 'tx-2'")  # purged; tx-1's row is newer
    with pytest.raises(ValueError, match="signed in transaction tx-2"):
        store.requeue(failed.id)


def test_an_older_outbox_gets_the_memory_filled_from_its_signed_jobs(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    old = OutboxStore(path)
    _sign(old, "tx-1")
    in_flight = old.commit_event(None, None, [_job("tx-2", rule="other")]).created[0]
    rendered(old, in_flight)
    old.db.execute("DROP TABLE signed_documents")  # as an outbox of the previous version
    old.close()
    store = OutboxStore(path)
    assert _memory(store) == [("r", "tx-1", "2026-01-02T03:04:05.000Z", "069Dn0000000001IAA", None)]
    store.purge(store_now(store) + 400 * DAY, 30 * DAY)
    signed = store.signed_job("Opportunity", OPP, "r")
    assert signed is not None and signed.transaction_id == "tx-1"


def store_now(store: OutboxStore) -> float:
    """The newest job change: a purge `now` counted from it expires every finished job."""
    row = store.db.execute("SELECT MAX(updated_at) FROM jobs").fetchone()
    return float(row[0] or 0)
