"""Envelope steps on a real SQLite outbox: invitations by step, views, signatures, refusal, void, resend,
link lookup, and a timeline event written in the same transaction as every change."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from envelope_paths import (
    ANNA,
    CARA,
    EVIDENCE,
    KEYS,
    T0,
    VISIT,
    authenticated,
    code_from_mail,
    envelope,
    job,
    mails,
    outbox,
    people,
    sign,
)

from sfsign.outbox import Job, OutboxStore
from sfsign.outbox import envelopes as envelope_steps
from sfsign.outbox.envelope_models import MailState, SignResult
from sfsign.signing.lifecycle import DAY, EnvelopePolicy, EventType
from sfsign.signing.model import AuthMethod, EnvelopeState, MailKind, RecipientState


def _events(store: OutboxStore, env_id: int) -> list[tuple[str, str | None]]:
    """(event, first name of the recipient) of the envelope's timeline."""
    names = {r.id: r.name.split()[0] for r in store.recipients(env_id)}
    return [(e.type.value, names.get(e.recipient_id) if e.recipient_id else None) for e in store.timeline(env_id)]


def test_a_new_envelope_invites_step_one_queues_their_mails_and_keeps_later_steps_waiting(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    who = people(store, env)
    assert (env.state, env.current_step, env.steps, env.auth_method) == (EnvelopeState.SENT, 1, 2, AuthMethod.EMAIL_OTP)
    assert (env.expires_at, env.next_due_at, env.document_sha256_before) == (T0 + 30 * DAY, T0 + 3 * DAY, "ab" * 32)
    assert {n: r.state for n, r in who.items()} == {
        "Anna": RecipientState.INVITED, "Bert": RecipientState.INVITED, "Cara": RecipientState.WAITING}
    assert (who["Anna"].next_reminder_at, who["Cara"].next_reminder_at) == (T0 + 3 * DAY, None)
    invitations = mails(store, env, MailKind.INVITATION)
    assert sorted(m.recipient_email or "" for m in invitations) == ["anna@example.com", "bert@example.com"]
    assert len({m.message_id for m in invitations}) == 2 and all(m.message_id.startswith("<") for m in invitations)
    assert _events(store, env.id) == [("sent", None), ("invited", "Anna"), ("invited", "Bert")]


def test_making_the_envelope_again_returns_the_first_one_and_invites_nobody_twice(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    first_job = store.by_transaction("tx-env-1")
    assert first_job is not None
    again = store.create_envelope(first_job, [ANNA], EnvelopePolicy(), T0 + 60, KEYS)
    assert again == env and len(mails(store, env, MailKind.INVITATION)) == 2


@pytest.mark.parametrize("steps", [(), (2,), (1, 3)])
def test_signers_must_come_in_steps_without_a_gap(tmp_path: Path, steps: tuple[int, ...]) -> None:
    store = outbox(tmp_path)
    with pytest.raises(ValueError, match="steps"):
        store.create_envelope(job(store), [replace(ANNA, step=s) for s in steps], EnvelopePolicy(), T0, KEYS)


def test_the_first_view_moves_recipient_and_envelope_and_later_views_record_nothing(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    anna = people(store, env)["Anna"]
    viewed = store.mark_recipient_viewed(anna.id, T0 + 60, VISIT)
    assert (viewed.state, viewed.viewed_at) == (RecipientState.VIEWED, T0 + 60)
    store.mark_recipient_viewed(anna.id, T0 + 120, VISIT)
    store.mark_recipient_viewed(people(store, env)["Cara"].id, T0 + 120, VISIT)  # not her turn: nothing
    assert store.envelope(env.transaction_id).state is EnvelopeState.VIEWED  # type: ignore[union-attr]
    [view] = [e for e in store.timeline(env.id) if e.type is EventType.VIEWED]
    assert (view.ip, view.user_agent, view.auth_method) == (VISIT.ip, VISIT.user_agent, "email_otp")


def test_signing_needs_the_code_then_step_two_is_invited_once_step_one_all_signed(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    who = people(store, env)
    assert store.mark_recipient_signed(who["Anna"].id, EVIDENCE, T0).result is SignResult.NOT_AUTHENTICATED
    assert store.mark_recipient_signed(who["Cara"].id, EVIDENCE, T0).result is SignResult.NOT_YOUR_TURN
    authenticated(store, who["Anna"], T0 + 10)
    first = store.mark_recipient_signed(who["Anna"].id, EVIDENCE, T0 + 20)
    assert (first.result, first.invited, first.envelope.state) == (
        SignResult.SIGNED, (), EnvelopeState.PARTIALLY_SIGNED)
    assert (first.recipient.signed_name, first.recipient.ip, first.recipient.next_reminder_at) == (
        "Ada Lovelace", VISIT.ip, None)
    authenticated(store, who["Bert"], T0 + 30)
    second = store.mark_recipient_signed(who["Bert"].id, EVIDENCE, T0 + 40)
    assert second.invited == (who["Cara"].id,) and second.envelope.current_step == 2
    cara = people(store, env)["Cara"]
    assert (cara.state, cara.invited_at, cara.next_reminder_at) == (RecipientState.INVITED, T0 + 40, T0 + 40 + 3 * DAY)
    assert [m.recipient_id for m in mails(store, env, MailKind.INVITATION, None)].count(cara.id) == 1


def test_the_last_signature_completes_the_envelope_and_everyone_gets_the_completed_copy(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    for name in ("Anna", "Bert", "Cara"):
        sign(store, people(store, env)[name], T0 + 100)
    done = store.envelope(env.transaction_id)
    assert done is not None and (done.state, done.completed_at, done.ended_at, done.next_due_at) == (
        EnvelopeState.COMPLETED, T0 + 100, T0 + 100, None)
    assert sorted(m.recipient_email or "" for m in mails(store, env, MailKind.COMPLETED)) == [
        "anna@example.com", "bert@example.com", "cara@example.com"]
    assert _events(store, env.id)[-2:] == [("signed", "Cara"), ("completed", None)]
    assert store.record_signed_document(env.transaction_id, "cd" * 32, T0 + 200).document_sha256_after == "cd" * 32


def test_a_second_signature_of_one_recipient_is_a_no_op_that_answers_already_signed(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    anna = people(store, env)["Anna"]
    sign(store, anna, T0)
    before = (store.timeline(env.id), store.envelope_mails(env.id), people(store, env))
    again = store.mark_recipient_signed(anna.id, EVIDENCE, T0 + 5)
    assert again.result is SignResult.ALREADY_SIGNED and again.recipient.signed_at == T0
    assert (store.timeline(env.id), store.envelope_mails(env.id), people(store, env)) == before


def test_a_signature_needs_a_typed_name_and_consent(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    anna = people(store, envelope(store))["Anna"]
    for bad in (replace(EVIDENCE, consent=False), replace(EVIDENCE, typed_name="  ")):
        with pytest.raises(ValueError):
            store.mark_recipient_signed(anna.id, bad, T0)


def test_a_refusal_ends_the_envelope_tells_the_others_and_kills_every_link(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    who = people(store, env)
    sign(store, who["Anna"], T0)
    authenticated(store, who["Bert"], T0 + 10)
    refused = store.mark_recipient_refused(who["Bert"].id, "  wrong price  ", T0 + 20, VISIT)
    assert (refused.result, refused.envelope.state, refused.envelope.reason) == (
        SignResult.REFUSED, EnvelopeState.REFUSED, "wrong price")
    assert (refused.recipient.state, refused.recipient.reason, refused.envelope.next_due_at) == (
        RecipientState.REFUSED, "wrong price", None)
    assert [m.recipient_email for m in mails(store, env, MailKind.REFUSED)] == ["anna@example.com"]  # not Cara
    assert mails(store, env, MailKind.INVITATION) == []  # nothing live left in the queue
    token = KEYS.link_token(env.transaction_id, who["Cara"].id, 1)
    match = store.recipient_by_token(token)
    assert match is not None and not match.live and match.envelope.state is EnvelopeState.REFUSED
    assert store.mark_recipient_signed(who["Cara"].id, EVIDENCE, T0 + 30).result is SignResult.ENDED
    assert store.issue_code(who["Cara"].id, T0 + 30, KEYS).result.value == "ended"
    events = len(store.timeline(env.id))
    assert store.mark_recipient_refused(who["Bert"].id, "again", T0 + 40).result is SignResult.REFUSED
    assert len(store.timeline(env.id)) == events


def test_declining_needs_a_reason_and_the_code(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    anna = people(store, envelope(store))["Anna"]
    with pytest.raises(ValueError):
        store.mark_recipient_refused(anna.id, "   ", T0)
    assert store.mark_recipient_refused(anna.id, "no", T0).result is SignResult.NOT_AUTHENTICATED


def test_without_email_otp_the_link_alone_may_sign(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store, (ANNA,), policy=EnvelopePolicy(auth=AuthMethod.NONE))
    anna = people(store, env)["Anna"]
    assert store.issue_code(anna.id, T0, KEYS).result.value == "not_needed"
    outcome = store.mark_recipient_signed(anna.id, EVIDENCE, T0)
    assert (outcome.result, outcome.envelope.state) == (SignResult.SIGNED, EnvelopeState.COMPLETED)


def test_void_ends_a_live_envelope_once_and_tells_who_holds_a_link(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    store.issue_code(people(store, env)["Anna"].id, T0, KEYS)
    voided = store.void(env.transaction_id, "wrong template", T0 + 5, actor="test")
    assert (voided.state, voided.reason, voided.ended_at, voided.next_due_at) == (
        EnvelopeState.VOIDED, "wrong template", T0 + 5, None)
    assert sorted(m.recipient_email or "" for m in mails(store, env, MailKind.VOIDED)) == [
        "anna@example.com", "bert@example.com"]
    cancelled = mails(store, env, state=MailState.CANCELLED)
    assert {m.kind for m in cancelled} == {MailKind.INVITATION, MailKind.CODE}
    assert all(m.sealed is None for m in cancelled)
    assert store.void(env.transaction_id, "twice", T0 + 9) == voided
    assert [e.detail for e in store.timeline(env.id) if e.type is EventType.VOIDED] == ["test: wrong template"]
    with pytest.raises(ValueError):
        store.void(env.transaction_id, " ", T0)
    with pytest.raises(KeyError):
        store.void("no-such-tx", "x", T0)


def test_resend_queues_a_new_mail_with_the_same_link_and_a_new_message_id(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    anna = people(store, env)["Anna"]
    [first] = [m for m in mails(store, env, MailKind.INVITATION) if m.recipient_id == anna.id]
    again = store.resend(env.transaction_id, anna.id, T0 + 60)
    assert again.message_id != first.message_id and again.token_generation == first.token_generation
    assert [m.id for m in mails(store, env, MailKind.INVITATION) if m.recipient_id == anna.id] == [again.id]
    match = store.recipient_by_token(KEYS.link_token(env.transaction_id, anna.id, again.token_generation))
    assert match is not None and match.recipient.id == anna.id and match.live
    assert _events(store, env.id)[-1] == ("resent", "Anna")
    with pytest.raises(ValueError, match="waiting"):
        store.resend(env.transaction_id, people(store, env)["Cara"].id, T0)
    with pytest.raises(KeyError):
        store.resend(env.transaction_id, 9999, T0)


def test_unknown_and_malformed_tokens_are_hashed_and_looked_up_alike(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = outbox(tmp_path)
    envelope(store)
    hashed: list[str] = []
    real = envelope_steps.token_hash
    monkeypatch.setattr(envelope_steps, "token_hash", lambda t: hashed.append(t) or real(t))
    given = ["", "%%%", "a" * 43, "\ud800", "x" * 5000]
    assert [store.recipient_by_token(t) for t in given] == [None] * len(given)
    assert hashed == given


# ------------------------------------------------------------------ one transaction per change, event included

STEPS: dict[str, Callable[[OutboxStore], object]] = {
    "create_envelope": lambda s: s.create_envelope(_job(s, "tx-env-2"), [ANNA], EnvelopePolicy(), T0, KEYS),
    "mark_recipient_viewed": lambda s: s.mark_recipient_viewed(_who(s, "Anna"), T0 + 1, VISIT),
    "mark_recipient_signed": lambda s: s.mark_recipient_signed(_who(s, "Anna"), EVIDENCE, T0 + 1),
    "mark_recipient_refused": lambda s: s.mark_recipient_refused(_who(s, "Anna"), "no", T0 + 1),
    "void": lambda s: s.void("tx-env-1", "stop", T0 + 1),
    "resend": lambda s: s.resend("tx-env-1", _who(s, "Bert"), T0 + 1),
    "issue_code": lambda s: s.issue_code(_who(s, "Bert"), T0 + 1, KEYS),
    "check_code (wrong)": lambda s: s.check_code(_who(s, "Bert"), "000000x", T0 + 1, KEYS),
    "check_code (right)": lambda s: s.check_code(_who(s, "Bert"), _bert_code(s), T0 + 1, KEYS),
    "mark_mail_sent": lambda s: s.mark_mail_sent(_first_mail(s), T0 + 1),
    "mark_mail_failed (permanent)": lambda s: s.mark_mail_failed(_first_mail(s), "550 no", T0 + 1, permanent=True),
    "run_due (reminder)": lambda s: s.run_due(1, T0 + 3 * DAY),
    "run_due (expiry)": lambda s: s.run_due(1, T0 + 30 * DAY),
}


def _job(store: OutboxStore, tx: str) -> Job:
    found = store.by_transaction(tx)
    assert found is not None
    return found


def _who(store: OutboxStore, name: str) -> int:
    return next(r.id for r in store.recipients(1) if r.name.startswith(name))


def _first_mail(store: OutboxStore) -> int:
    return store.envelope_mails(1)[0].id


def _bert_code(store: OutboxStore) -> str:
    return code_from_mail(store, next(r for r in store.recipients(1) if r.name.startswith("Bert")))


def _snapshot(store: OutboxStore) -> dict[str, list[tuple[object, ...]]]:
    return {t: store.db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("envelopes", "recipients", "envelope_events", "mails", "jobs")}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_change_whose_timeline_event_fails_leaves_nothing_with_failing_event_insert(tmp_path: Path,
                                                                                      step: str) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    anna = people(store, env)["Anna"]
    authenticated(store, anna, T0)  # Anna may sign or decline
    store.issue_code(_who(store, "Bert"), T0, KEYS)  # Bert holds a code
    job(store, "tx-env-2", "006000000000002AAA")  # a job without its envelope yet
    before = _snapshot(store)
    store.db.execute("CREATE TRIGGER refuse_events BEFORE INSERT ON envelope_events "
                     "BEGIN SELECT RAISE(ABORT, 'no event'); END")
    with pytest.raises(sqlite3.DatabaseError, match="no event"):
        STEPS[step](store)
    assert _snapshot(store) == before


def test_an_outbox_of_an_older_version_gains_the_envelope_tables_and_their_new_columns(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    job(store)
    for table in ("mails", "envelope_events", "envelopes"):
        store.db.execute(f"DROP TABLE {table}")
    store.db.execute("ALTER TABLE recipients DROP COLUMN mail_error")
    store.close()
    store = outbox(tmp_path)
    assert store.by_transaction("tx-env-1") is not None  # the jobs stay
    assert "mail_error" in {c[1] for c in store.db.execute("PRAGMA table_info(recipients)")}
    old_job = store.by_transaction("tx-env-1")
    assert old_job is not None
    env = store.create_envelope(old_job, [ANNA, CARA], EnvelopePolicy(), T0, KEYS)
    assert env.state is EnvelopeState.SENT
