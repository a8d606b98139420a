"""The retention purge of envelopes (GDPR) and the record of an address the relay refused, on a real outbox
file: what an ended envelope keeps and loses, what holds the purge back, and that a live one is never touched.
Time is passed in (`now`): no clock, no sleep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envelope_paths import ANNA, BERT, DAYS, KEYS, T0, VISIT, authenticated, envelope, mails, outbox, people, sign

from sfsign.cli import main
from sfsign.outbox import OutboxStore
from sfsign.outbox.envelope_models import Envelope, MailState
from sfsign.outbox.envelope_retention import PURGED_MAIL_ERROR
from sfsign.signing.lifecycle import EventType
from sfsign.signing.model import EnvelopeState, MailKind, RecipientState

RETAIN = 30 * DAYS
DOWNLOAD = 7 * DAYS
REASON = "Budget frozen, call Bert Legal on +49 30 1234567"
#: Everything personal the envelope below collects: none of it may be left after the purge.
PERSONAL = ("anna@example.com", "bert@example.com", "Anna Buyer", "Bert Legal", "Ada Lovelace", "203.0.113.7",
            "Mozilla", "Budget frozen", "003000000000001AAA", "003000000000002AAA", "550 5.1.1")
ENVELOPE_TABLES = ("envelopes", "recipients", "envelope_events", "mails")


@pytest.fixture
def store(tmp_path: Path) -> OutboxStore:
    return outbox(tmp_path)


def _refused(store: OutboxStore, *, job_state: str = "envelope_ended", told: bool = True) -> Envelope:
    """Anna signs, Bert's address once bounced, then he opens his link and declines at T0 + 1 day; the record
    shows it and (told) its owner was notified; the job ended (`job_state`)."""
    env = envelope(store, (ANNA, BERT))
    who = people(store, env)
    sign(store, who["Anna"], T0 + 60)
    [bert_invitation] = [m for m in mails(store, env, MailKind.INVITATION) if m.recipient_id == who["Bert"].id]
    store.mark_mail_failed(bert_invitation.id, "550 5.1.1 <recipient>: Recipient address rejected", T0 + 90,
                           permanent=True)
    authenticated(store, who["Bert"], T0 + 120)
    store.mark_recipient_viewed(who["Bert"].id, T0 + 120, VISIT)
    store.mark_recipient_refused(who["Bert"].id, REASON, T0 + DAYS, VISIT)
    store.db.execute("UPDATE jobs SET state = ? WHERE transaction_id = ?", (job_state, env.transaction_id))
    _shown(store, env, told=told)
    return store.envelope(env.transaction_id)  # type: ignore[return-value]


def _shown(store: OutboxStore, env: Envelope, *, told: bool = True) -> None:
    """What the record mirror does once the record shows the envelope and its owner was told."""
    now = store.envelope(env.transaction_id)
    assert now is not None
    store.mark_mirrored(env.id, now.version)
    if told:
        store.mark_notified(env.id, T0 + DAYS)
        for recipient in store.recipients(env.id):
            if recipient.mail_rejected_at is not None:
                store.mark_rejection_notified(recipient.id, T0 + DAYS)


def _rows(store: OutboxStore, env: Envelope) -> str:
    """Every envelope table's rows of this envelope, as text."""
    found: list[Any] = []
    for table in ENVELOPE_TABLES:
        column = "id" if table == "envelopes" else "envelope_id"
        found += store.db.execute(f"SELECT * FROM {table} WHERE {column} = ?", (env.id,)).fetchall()
    return repr(found)


def test_an_ended_envelope_keeps_its_people_until_the_retention_passes_then_only_they_go(store: OutboxStore) -> None:
    env = _refused(store)
    assert all(p in _rows(store, env) for p in PERSONAL), "the test's envelope holds every kind of personal data"
    ended = env.ended_at
    assert ended is not None and env.state is EnvelopeState.REFUSED
    before_events = [(e.type, e.at, e.recipient_id) for e in store.timeline(env.id)]
    before_people = {r.id: (r.state, r.step, r.role, r.signed_at, r.refused_at) for r in store.recipients(env.id)}

    assert store.purge_envelopes(ended + RETAIN - 1, RETAIN, DOWNLOAD) == 0
    assert store.purge_envelopes(ended + RETAIN, RETAIN, DOWNLOAD, dry_run=True) == 1
    assert all(p in _rows(store, env) for p in PERSONAL), "a dry run changes nothing"
    assert store.purge_envelopes(ended + RETAIN, RETAIN, DOWNLOAD) == 1

    text = _rows(store, env)
    assert not [p for p in PERSONAL if p in text]
    after = store.envelope(env.transaction_id)
    assert after is not None and after.purged_at == ended + RETAIN
    assert (after.state, after.ended_at, after.document_sha256_before, after.steps, after.reason) == (
        EnvelopeState.REFUSED, ended, "ab" * 32, 1, None)
    assert {r.id: (r.state, r.step, r.role, r.signed_at, r.refused_at) for r in store.recipients(env.id)} == \
        before_people, "states, steps, roles and times are the audit's"
    assert [(e.type, e.at, e.recipient_id) for e in store.timeline(env.id)] == before_events
    assert {e.type: e.detail for e in store.timeline(env.id)}[EventType.CODE_SENT] is None
    rejected = [r for r in store.recipients(env.id) if r.mail_error is not None]
    assert [r.mail_error for r in rejected] == [PURGED_MAIL_ERROR], "that the relay refused them stays known"
    assert store.purge_envelopes(ended + 400 * DAYS, RETAIN, DOWNLOAD) == 0, "once"


def test_the_purged_links_are_unknown_and_the_queued_mails_cancelled(store: OutboxStore) -> None:
    env = envelope(store, (ANNA,))
    anna = people(store, env)["Anna"]
    token = KEYS.link_token(env.transaction_id, anna.id, anna.token_generation)
    assert store.recipient_by_token(token) is not None
    store.void(env.transaction_id, "wrong customer", T0 + 60, actor="005000000000009AAA")
    assert [m.kind for m in mails(store, env)] == [MailKind.VOIDED], "the withdrawal notice waits for the relay"
    store.db.execute("UPDATE jobs SET state = 'envelope_ended'")
    _shown(store, env)
    assert store.purge_envelopes(T0 + 60 + RETAIN, RETAIN, DOWNLOAD) == 1
    assert store.recipient_by_token(token) is None, "the link is an unknown link now"
    assert mails(store, env) == [] and {m.state for m in store.envelope_mails(env.id)} <= {
        MailState.CANCELLED, MailState.SENT}
    assert {e.type: e.detail for e in store.timeline(env.id)}[EventType.VOIDED] is None


def test_a_live_envelope_is_never_purged(store: OutboxStore) -> None:
    env = envelope(store, (ANNA, BERT))
    sign(store, people(store, env)["Anna"], T0 + 60)
    store.db.execute("UPDATE jobs SET state = 'done'")  # even with a job that says otherwise
    _shown(store, env)
    assert store.purge_envelopes(T0 + 1000 * DAYS, RETAIN, DOWNLOAD) == 0
    assert "anna@example.com" in _rows(store, env)


@pytest.mark.parametrize("job_state", ["error", "dead", "signatures_due"])
def test_an_envelope_whose_job_may_still_read_it_waits_for_the_job(store: OutboxStore, job_state: str) -> None:
    """An error or dead job can be retried (it would make the certificate of completion from these rows), an
    active one is running: the envelope waits until its job is finished for good, or its row is purged."""
    env = _refused(store, job_state=job_state)
    later = T0 + 400 * DAYS
    assert store.purge_envelopes(later, RETAIN, DOWNLOAD) == 0
    store.db.execute("DELETE FROM jobs")
    assert store.purge_envelopes(later, RETAIN, DOWNLOAD) == 1
    assert store.envelope(env.transaction_id).purged_at == later  # type: ignore[union-attr]


def test_an_envelope_waits_until_its_record_shows_it_and_its_owner_was_told(store: OutboxStore) -> None:
    env = _refused(store, told=False)
    later = T0 + 400 * DAYS
    assert store.purge_envelopes(later, RETAIN, DOWNLOAD) == 0, "the refusal's notification names the signer"
    store.mark_notified(env.id, later)
    assert store.purge_envelopes(later, RETAIN, DOWNLOAD) == 0, "the refused address's notification is owed too"
    [bert] = [r for r in store.recipients(env.id) if r.mail_rejected_at is not None]
    store.mark_rejection_notified(bert.id, later)
    store.db.execute("UPDATE envelopes SET version = version + 1 WHERE id = ?", (env.id,))
    assert store.purge_envelopes(later, RETAIN, DOWNLOAD) == 0, "the record does not show its last state yet"
    _shown(store, env)
    assert store.purge_envelopes(later, RETAIN, DOWNLOAD) == 1


def test_a_completed_envelope_keeps_its_links_for_the_download_days(store: OutboxStore) -> None:
    env = envelope(store, (ANNA,))
    sign(store, people(store, env)["Anna"], T0 + 60)
    done = store.envelope(env.transaction_id)
    assert done is not None and done.state is EnvelopeState.COMPLETED and done.completed_at == T0 + 60
    store.db.execute("UPDATE jobs SET state = 'done'")
    _shown(store, env)
    short = 1 * DAYS  # a retention shorter than the download days
    assert store.purge_envelopes(T0 + 60 + DOWNLOAD - 1, short, DOWNLOAD) == 0
    assert store.purge_envelopes(T0 + 60 + DOWNLOAD, short, DOWNLOAD) == 1


def test_a_refused_address_is_for_the_record_and_its_owner_once_while_the_envelope_is_live(
        store: OutboxStore) -> None:
    env = envelope(store, (ANNA, BERT))
    who = people(store, env)
    version = store.envelope(env.transaction_id).version  # type: ignore[union-attr]
    store.mark_mirrored(env.id, version)
    [invitation] = [m for m in mails(store, env, MailKind.INVITATION) if m.recipient_id == who["Anna"].id]
    store.mark_mail_failed(invitation.id, "550 5.1.1 <recipient>: User unknown", T0 + 5, permanent=True)
    anna = store.recipients(env.id)[0]
    assert (anna.mail_rejected_at, anna.mail_error) == (T0 + 5, "550 5.1.1 <recipient>: User unknown")
    [view] = store.envelopes_to_mirror(T0 + 5)
    assert view.envelope.version == version + 1 and [r.id for r in view.rejected] == [anna.id]
    assert store.rejections_to_notify(T0 + 5) == [], "the owner is told once the record shows the note"
    store.mark_mirrored(env.id, view.envelope.version)
    [notice] = store.rejections_to_notify(T0 + 5)
    assert notice.recipient.id == anna.id and notice.view.envelope.id == env.id

    # The notification fails for now: it waits for its retry time.
    store.mark_rejection_notify_failed(anna.id, T0 + 65)
    assert store.rejections_to_notify(T0 + 64) == [] and len(store.rejections_to_notify(T0 + 65)) == 1
    store.mark_rejection_notified(anna.id, T0 + 70)
    assert store.rejections_to_notify(T0 + 1000) == []

    # Her reminder bounces too: the reply is kept, nothing new for the record or the owner.
    store.run_due(env.id, T0 + 3 * DAYS)
    [reminder] = [m for m in mails(store, env, MailKind.REMINDER) if m.recipient_id == anna.id]
    before = store.envelope(env.transaction_id).version  # type: ignore[union-attr]
    store.mark_mail_failed(reminder.id, "550 5.1.1 <recipient>: mailbox gone", T0 + 3 * DAYS, permanent=True)
    anna = store.recipients(env.id)[0]
    assert (anna.mail_rejected_at, anna.mail_error) == (T0 + 5, "550 5.1.1 <recipient>: mailbox gone")
    assert store.envelope(env.transaction_id).version == before  # type: ignore[union-attr]
    assert store.rejections_to_notify(T0 + 4 * DAYS) == []


def test_a_refused_notice_after_the_envelope_ended_stays_on_the_timeline_only(store: OutboxStore) -> None:
    env = envelope(store, (ANNA,))
    store.void(env.transaction_id, "wrong customer", T0 + 60)
    [notice] = mails(store, env, MailKind.VOIDED)
    version = store.envelope(env.transaction_id).version  # type: ignore[union-attr]
    store.mark_mail_failed(notice.id, "550 5.1.1 <recipient>: User unknown", T0 + 61, permanent=True)
    anna = store.recipients(env.id)[0]
    assert anna.mail_error is not None and anna.mail_rejected_at is None
    assert store.envelope(env.transaction_id).version == version  # type: ignore[union-attr]
    assert [e.type for e in store.timeline(env.id)][-1] is EventType.MAIL_REJECTED


def test_envelopes_show_says_a_purged_envelope_was_purged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SFSIGN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SFSIGN_SECRETS_DIR", str(tmp_path / "no-secrets"))
    store = outbox(tmp_path)
    env = _refused(store)
    assert env.ended_at is not None
    store.purge_envelopes(env.ended_at + RETAIN, RETAIN, DOWNLOAD)
    store.close()
    assert main(["envelopes", "show", env.transaction_id]) == 0
    out = capsys.readouterr().out
    assert f"envelope {env.transaction_id}: refused" in out
    assert "personal data purged" in out and "SFSIGN_JOB_RETENTION_DAYS" in out
    assert " signed " in out and " refused " in out, "the states and the timeline stay"
    assert not [p for p in PERSONAL if p in out]
    assert RecipientState.REFUSED.value in out
