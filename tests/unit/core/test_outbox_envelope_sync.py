"""The envelopes' record side on a real SQLite outbox: each timeline event the record's audit trail shows is an
audit row in the same transaction (refused → declined, recipient by id, never by address), the version the
record mirror tracks, the notifications' flags, and a rep's Resend done once per request."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from envelope_paths import CARA, EVIDENCE, T0, VISIT, authenticated, envelope, mails, outbox, people

from sfsign.outbox import OutboxStore, StepAudit
from sfsign.outbox.schema import open_database
from sfsign.salesforce.names import ENVELOPE_EVENT_TYPES
from sfsign.signing.lifecycle import DAY, SIGNATURE_EVENT_TYPES, EventType
from sfsign.signing.model import EnvelopeState, MailKind


def _audit(store: OutboxStore) -> list[dict[str, Any]]:
    """The envelopes' audit rows (the job's own `queued` row left out)."""
    return [dict(r) for r in store.pending_audit(1000) if r["event_type"] in ENVELOPE_EVENT_TYPES]


def test_every_mapped_event_type_is_a_value_of_the_package_picklist() -> None:
    assert set(SIGNATURE_EVENT_TYPES.values()) == set(ENVELOPE_EVENT_TYPES)
    assert SIGNATURE_EVENT_TYPES[EventType.REFUSED] == "declined"


def test_envelope_events_become_audit_rows_naming_the_recipient_by_id_and_step(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    who = people(store, env)
    anna, bert = who["Anna"], who["Bert"]
    store.mark_recipient_viewed(anna.id, T0 + 60, VISIT)
    authenticated(store, anna, T0 + 70)
    store.mark_recipient_signed(anna.id, EVIDENCE, T0 + 80)
    authenticated(store, bert, T0 + 85)
    store.mark_recipient_refused(bert.id, "Prices too high", T0 + 90, VISIT)
    rows = _audit(store)
    assert [r["event_type"] for r in rows] == ["sent", "viewed", "signed", "declined"]
    assert all((r["transaction_id"], r["sobject"], r["record_id"]) == ("tx-env-1", "Opportunity", "006000000000001AAA")
               for r in rows)
    declined = rows[-1]
    assert declined["detail"] == f"recipient {bert.id} (003000000000002AAA), step 1 of 2: Prices too high"
    assert declined["actor"] == "003000000000002AAA" and declined["occurred_at"].startswith("2027-01-15T08:01:30")
    assert not any("@" in (r["detail"] or "") + r["actor"] for r in rows), "never an address"


def test_an_event_the_record_does_not_show_writes_no_audit_row_and_a_failed_change_writes_neither(
        tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    before = len(_audit(store))
    store.mark_mail_sent(mails(store, env, MailKind.INVITATION)[0].id, T0 + 1)  # mail_sent: timeline only
    assert len(_audit(store)) == before
    store.db.conn.execute("CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'x'); END")
    with pytest.raises(sqlite3.IntegrityError):
        store.mark_recipient_viewed(people(store, env)["Anna"].id, T0 + 60, VISIT)
    assert [e.type for e in store.timeline(env.id)].count(EventType.VIEWED) == 0, "rolled back with its audit row"


def test_record_events_bump_the_version_the_mirror_writes_and_a_newer_event_keeps_it_unsynced(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    [view] = store.envelopes_to_mirror(T0)
    assert (view.envelope.version, view.signed, view.total) == (1, 0, 3)
    anna = people(store, env)["Anna"]
    store.mark_recipient_viewed(anna.id, T0 + 60, VISIT)  # while the write of version 1 is on its way
    store.mark_mirrored(env.id, view.envelope.version)
    [again] = store.envelopes_to_mirror(T0 + 61)
    assert (again.envelope.version, again.envelope.synced_version, again.envelope.state) == (
        2, 1, EnvelopeState.VIEWED)
    failed = store.mark_mirror_failed(env.id, "503 SERVER_UNAVAILABLE", T0 + 70)
    assert failed.mirror_attempts == 1 and store.envelopes_to_mirror(T0 + 69) == []
    assert [v.envelope.id for v in store.envelopes_to_mirror(T0 + 70)] == [env.id]
    store.mark_mirrored(env.id, 2)
    assert store.envelopes_to_mirror(T0 + 80) == [] and store.envelope("tx-env-1").mirror_attempts == 0  # type: ignore[union-attr]


def test_outcomes_are_notified_once_the_record_shows_them_and_completed_once_the_job_is_done(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    refused = envelope(store)
    anna = people(store, refused)["Anna"]
    authenticated(store, anna, T0 + 4)
    store.mark_recipient_refused(anna.id, "No budget", T0 + 5, VISIT)
    assert store.outcomes_to_notify(T0 + 6) == [], "not before the record shows Refused"
    store.mark_mirrored(refused.id, store.envelope("tx-env-1").version)  # type: ignore[union-attr]
    [view] = store.outcomes_to_notify(T0 + 6)
    assert (view.envelope.state, view.decliner) == (EnvelopeState.REFUSED, "Anna Buyer")
    store.mark_notify_failed(refused.id, "503", T0 + 60)
    assert store.outcomes_to_notify(T0 + 59) == [] and len(store.outcomes_to_notify(T0 + 60)) == 1
    store.mark_notified(refused.id, T0 + 60)
    assert store.outcomes_to_notify(T0 + 9 * DAY) == []

    done = envelope(store, (replace(CARA, step=1),), tx="tx-env-2", record="006000000000002AAA")
    cara = people(store, done)["Cara"]
    authenticated(store, cara, T0 + 10)
    store.mark_recipient_signed(cara.id, EVIDENCE, T0 + 11)
    assert store.outcomes_to_notify(T0 + 12) == [], "completed: not before the job is done"
    job = store.by_transaction("tx-env-2")
    assert job is not None
    store.mark_done(job, StepAudit("Completed"))
    [view] = store.outcomes_to_notify(T0 + 12)
    assert (view.envelope.transaction_id, view.signed, view.total) == ("tx-env-2", 1, 1)


def test_a_reps_resend_sends_every_live_invitation_again_once_per_request(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    assert store.live_envelopes("Opportunity", "006000000000001AAA") == [store.envelope("tx-env-1")]
    assert store.live_envelopes("Opportunity", "006000000000001AAA", rule="other") == []
    again = store.resend_all("tx-env-1", T0 + 60, "rep 005000000000009AAA", "pe:uuid-1")
    assert sorted(again) == sorted(r.id for n, r in people(store, env).items() if n in ("Anna", "Bert"))
    assert store.resend_all("tx-env-1", T0 + 61, "rep 005000000000009AAA", "pe:uuid-1") == [], "a replayed event"
    assert len(mails(store, env, MailKind.INVITATION)) == 2, "the first invitations cancelled, two new ones"
    reminded = [r for r in _audit(store) if r["event_type"] == "reminded"]
    assert len(reminded) == 2 and all(r["actor"] == "rep 005000000000009AAA" for r in reminded)
    assert "sent again by rep 005000000000009AAA (request pe:uuid-1)" in reminded[0]["detail"]
    store.void("tx-env-1", "Wrong price list", T0 + 70, "rep 005000000000009AAA")
    assert store.live_envelopes("Opportunity", "006000000000001AAA") == []
    assert store.resend_all("tx-env-1", T0 + 71, "rep", "pe:uuid-2") == []
    voided = _audit(store)[-1]
    assert (voided["event_type"], voided["detail"]) == ("voided", "rep 005000000000009AAA: Wrong price list")


def test_an_outbox_of_an_older_version_gains_the_mirror_columns(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    envelope(store)
    store.db.conn.execute("DROP INDEX envelopes_unsynced")
    store.db.conn.execute("ALTER TABLE envelopes DROP COLUMN mirror_error")
    store.close()
    db = open_database(tmp_path / "outbox.sqlite")
    columns = {row[1] for row in db.conn.execute("PRAGMA table_info(envelopes)")}
    assert {"version", "synced_version", "mirror_error", "notified_at"} <= columns
    db.close()
