"""One job per record and rule, enforced by SQLite; parked events; the migration of older outbox files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from job_paths import done

from sfsign.outbox import AuditEvent, NewJob, OutboxStore

OPP18 = "006Dn0000000001IAA"
OPP15 = OPP18[:15]


def _job(tx: str, record: str = OPP18, rule: str = "r", source: str = "cdc") -> NewJob:
    return NewJob(transaction_id=tx, rule=rule, sobject="Opportunity", record_id=record, source=source)


def _insert_raw(store: OutboxStore, tx: str, record: str, state: str) -> None:
    store.db.execute(
        "INSERT INTO jobs (transaction_id, rule, sobject, record_id, source, state, attempts, next_attempt_at, "
        "created_at, updated_at, upload_uncertain) VALUES (?, 'r', 'Opportunity', ?, 'event', ?, 0, 0, 0, 0, 0)",
        (tx, record, state),
    )


def test_the_unique_index_refuses_a_second_live_job_for_one_record(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    store.commit_event("/c", 1, [_job("tx-1")])
    with pytest.raises(sqlite3.IntegrityError):
        _insert_raw(store, "tx-2", OPP18, "queued")  # past the duplicate check: SQLite still says no
    _insert_raw(store, "tx-3", OPP18, "error")  # a failed job does not hold the record
    store.commit_event("/c", 2, [_job("tx-4", source="ltv-refresh")])  # nor does an archive renewal count
    assert store.counts() == {"queued": 1, "error": 1}


def test_a_refused_request_leaves_an_audit_row_with_the_replay_id(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    refusal = AuditEvent("tx-r", "Opportunity", OPP18, "refused", "005Dn0000000001IAA", "Rule__c 'x' refused")
    store.commit_event("/event/Sign_Request__e", 7, [], [refusal])
    rows = store.pending_audit()
    assert [(r["event_type"], r["record_id"], r["detail"]) for r in rows] == [
        ("refused", OPP18, "Rule__c 'x' refused")]
    assert store.replay_id("/event/Sign_Request__e") == 7


def test_a_parked_event_keeps_its_payload_and_moves_the_replay_id(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    message = {"channel": "/data/OpportunityChangeEvent", "data": {"event": {"replayId": 12}, "payload": {}}}
    store.park_event("/data/OpportunityChangeEvent", 12, message, "malformed: recordIds", 1)
    assert store.replay_id("/data/OpportunityChangeEvent") == 12
    [parked] = store.parked_events()
    assert parked.reason == "malformed: recordIds" and '"replayId": 12' in parked.payload
    assert store.parked_count() == 1


def test_retry_of_a_failed_job_is_refused_while_the_record_has_a_newer_one(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.sqlite")
    store.commit_event("/c", 1, [_job("tx-1")])
    first = store.by_transaction("tx-1")
    assert first is not None
    store.mark_error(first, "no line items", "NOT_RENDERABLE")
    store.commit_event("/c", 2, [_job("tx-2")])
    with pytest.raises(ValueError, match="tx-2"):
        store.requeue(first.id)


def test_migration_normalises_ids_and_flags_contracts_signed_twice(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    old = OutboxStore(path)  # make it look like an outbox of the previous version
    old.db.execute("DROP INDEX jobs_one_per_record_v4")
    old.db.execute("DROP TABLE parked_events")
    old.db.execute("ALTER TABLE jobs DROP COLUMN duplicate_of")
    _insert_raw(old, "tx-18", OPP18, "done")
    _insert_raw(old, "tx-15", OPP15, "done")  # the same record, signed again through its 15-character id
    _insert_raw(old, "tx-up", OPP18.upper(), "done")  # and a third time through the upper-cased id
    _insert_raw(old, "tx-bad", "not-an-id", "error")
    old.close()

    store = OutboxStore(path)
    jobs = {j.transaction_id: j for j in store.jobs()}
    assert {j.record_id for t, j in jobs.items() if t != "tx-bad"} == {OPP18}
    assert jobs["tx-bad"].record_id == "not-an-id"  # left as it was: nothing is guessed or deleted
    assert jobs["tx-18"].duplicate_of is None
    assert jobs["tx-15"].duplicate_of == jobs["tx-up"].duplicate_of == jobs["tx-18"].id
    result = store.commit_event("/c", 3, [_job("tx-new", record=OPP18)])
    assert result.created == [] and "already has transaction" in result.duplicates[0][1]
    assert store.parked_count() == 0
    store.close()
    OutboxStore(path).close()  # opening it again is a no-op


def test_status_lists_parked_events_without_their_payload(tmp_path: Path) -> None:
    from sfsign.commands.status import collect_status, render_status, status_json

    store = OutboxStore(tmp_path / "o.sqlite")
    message = {"channel": "/data/OpportunityChangeEvent",
               "data": {"event": {"replayId": 5}, "payload": {"Name": "Customer GmbH"}}}
    store.park_event("/data/OpportunityChangeEvent", 5, message, "malformed: recordIds: 'x' is not an id", 1)
    report = collect_status(store)
    data = status_json(report)
    assert data["parked_events"]["count"] == 1
    [entry] = data["parked_events"]["newest"]
    assert entry["replay_id"] == 5 and entry["reason"].startswith("malformed")
    text = render_status(report)
    assert "parked events" in text and "replay id 5" in text
    assert "Customer GmbH" not in str(data) + text  # payloads may name customers: they stay in the outbox


def test_an_outbox_with_the_previous_index_gets_the_one_that_lets_a_reissue_supersede(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    old = OutboxStore(path)
    old.db.execute("DROP INDEX jobs_one_per_record_v4")
    old.db.execute(
        "CREATE UNIQUE INDEX jobs_one_per_record ON jobs (sobject, record_id, rule) WHERE state NOT IN "
        "('error', 'dead') AND source != 'ltv-refresh' AND duplicate_of IS NULL")
    old.commit_event("/c", 1, [_job("tx-1")])
    done(old, old.by_transaction("tx-1"))  # type: ignore[arg-type]
    old.close()
    store = OutboxStore(path)
    names = {i.name for i in store.db.table("jobs").indexes}
    assert "jobs_one_per_record" not in names and "jobs_one_per_record_v4" in names
    result = store.commit_event("/c", 2, [_job("tx-2", source="reissue")])
    assert [j.transaction_id for j in result.created] == ["tx-2"]
    assert store.by_transaction("tx-1").superseded_by == "tx-2"  # type: ignore[union-attr]
    again = store.commit_event("/c", 3, [_job("tx-3", source="reissue")])  # tx-2 is not signed yet
    assert not again.created and "in progress" in again.duplicates[0][1]
