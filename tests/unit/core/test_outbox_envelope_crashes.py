"""Exactly once across crashes: each step below runs, the outbox is closed (the process dies), and a fresh
`OutboxStore` on the same file repeats what a restarted daemon or a re-posted form would repeat."""

from __future__ import annotations

from pathlib import Path

from envelope_paths import (
    EVIDENCE,
    KEYS,
    SIGNERS,
    T0,
    VISIT,
    authenticated,
    code_from_mail,
    envelope,
    outbox,
    people,
)

from sfsign.outbox import Outbox
from sfsign.outbox.envelope_models import SignResult
from sfsign.signing.lifecycle import EnvelopePolicy, EventType
from sfsign.signing.model import EnvelopeState, MailKind


def _count(store_path: Path, kind: EventType) -> int:
    store = outbox(store_path)
    try:
        return sum(1 for e in store.timeline(1) if e.type is kind)
    finally:
        store.close()


def test_an_envelope_made_again_after_a_restart_invites_nobody_twice(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    store.close()
    store = outbox(tmp_path)
    job = store.by_transaction(env.transaction_id)
    assert job is not None
    again = store.create_envelope(job, SIGNERS, EnvelopePolicy(), T0 + 60, KEYS)
    assert again.id == env.id
    invitations = [m.recipient_id for m in store.envelope_mails(env.id) if m.kind is MailKind.INVITATION]
    assert sorted(invitations) == sorted(r.id for r in store.recipients(env.id) if r.step == 1)
    store.close()
    assert _count(tmp_path, EventType.INVITED) == 2


def test_a_signature_re_posted_after_a_restart_is_not_recorded_again(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    anna = people(store, env)["Anna"]
    authenticated(store, anna)
    assert store.mark_recipient_signed(anna.id, EVIDENCE, T0 + 1).result is SignResult.SIGNED
    store.close()
    store = outbox(tmp_path)
    again = store.mark_recipient_signed(anna.id, EVIDENCE, T0 + 2)
    assert (again.result, again.recipient.signed_at) == (SignResult.ALREADY_SIGNED, T0 + 1)
    store.close()
    assert _count(tmp_path, EventType.SIGNED) == 1


def test_the_next_step_is_invited_once_whatever_is_re_posted_after_a_restart(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    who = people(store, env)
    for name in ("Anna", "Bert"):
        authenticated(store, who[name])
    store.mark_recipient_signed(who["Anna"].id, EVIDENCE, T0 + 1)
    store.close()
    store = outbox(tmp_path)
    assert store.mark_recipient_signed(who["Bert"].id, EVIDENCE, T0 + 2).invited == (who["Cara"].id,)
    store.close()
    store = outbox(tmp_path)
    for name in ("Anna", "Bert"):  # both forms posted again
        assert store.mark_recipient_signed(who[name].id, EVIDENCE, T0 + 3).invited == ()
    cara_mails = [m for m in store.envelope_mails(env.id) if m.recipient_id == who["Cara"].id]
    assert [m.kind for m in cara_mails] == [MailKind.INVITATION]
    store.close()
    assert _count(tmp_path, EventType.INVITED) == 3


def test_a_mail_selected_again_after_a_crash_keeps_its_message_id(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    envelope(store)
    picked = store.next_mail(T0)
    assert picked is not None
    store.close()  # the relay took it; the process died before `mark_mail_sent` was committed
    store = outbox(tmp_path)
    again = store.next_mail(T0 + 5)
    assert again is not None and (again.id, again.message_id) == (picked.id, picked.message_id)
    store.mark_mail_sent(again.id, T0 + 6)
    store.close()
    store = outbox(tmp_path)
    assert store.next_mail(T0 + 7) != picked and store.next_mail(T0 + 7) is not None
    store.close()


def test_a_code_mail_re_selected_after_a_restart_still_carries_its_code(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    anna = people(store, envelope(store))["Anna"]
    store.issue_code(anna.id, T0, KEYS)
    code = code_from_mail(store, anna)
    store.close()
    store = outbox(tmp_path)
    assert code_from_mail(store, anna) == code
    assert store.check_code(anna.id, code, T0 + 1, KEYS).result.value == "verified"
    store.close()


async def test_the_async_face_drives_an_envelope_on_the_outbox_thread(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store)
    anna = people(store, env)["Anna"]
    store.close()
    box = Outbox(tmp_path / "outbox.sqlite")
    await box.open()
    try:
        match = await box.recipient_by_token(KEYS.link_token(env.transaction_id, anna.id, 1))
        assert match is not None and match.recipient.id == anna.id and match.live
        await box.mark_recipient_viewed(anna.id, T0 + 1, VISIT)
        sent = await box.issue_code(anna.id, T0 + 2, KEYS)
        [mail] = [m for m in await box.envelope_mails(env.id) if m.id == sent.mail_id]
        assert mail.sealed is not None
        checked = await box.check_code(anna.id, KEYS.unseal(mail.sealed, mail.message_id), T0 + 3, KEYS)
        assert checked.result.value == "verified"
        outcome = await box.mark_recipient_signed(anna.id, EVIDENCE, T0 + 4)
        assert outcome.result is SignResult.SIGNED and outcome.envelope.state is EnvelopeState.PARTIALLY_SIGNED
        assert [e.type for e in await box.timeline(env.id)][-3:] == [
            EventType.CODE_SENT, EventType.CODE_VERIFIED, EventType.SIGNED]
    finally:
        await box.close()
