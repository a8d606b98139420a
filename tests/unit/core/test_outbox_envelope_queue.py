"""The mail queue and the due work on a real outbox, time driven by a fake clock: reminders on day 3 and day 5
once each, only to who has not answered in the current step, one on start after downtime, expiry on day 30;
mails retried with back-off, a permanent refusal recorded on the recipient."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envelope_paths import ANNA, CARA, DAYS, KEYS, T0, envelope, mails, outbox, people, sign

from sfsign.outbox import OutboxStore
from sfsign.outbox.envelope_models import MailState
from sfsign.signing.lifecycle import Clock, EventType
from sfsign.signing.model import EnvelopeState, MailKind


@dataclass
class FakeClock:
    at: float = T0

    def now(self) -> float:
        return self.at


def _scheduler_pass(store: OutboxStore, clock: Clock) -> None:
    """What the daemon's scheduler will do at each wake-up: run every envelope that fell due."""
    for env in store.due_envelopes(clock.now()):
        store.run_due(env.id, clock.now())


def _run_hourly(store: OutboxStore, clock: FakeClock, until: float) -> None:
    while clock.at < until:
        clock.at += 3600
        _scheduler_pass(store, clock)


def _reminder_days(store: OutboxStore, env_id: int, name: str) -> list[float]:
    rid = next(r.id for r in store.recipients(env_id) if r.name.startswith(name))
    return [round((e.at - T0) / DAYS, 2) for e in store.timeline(env_id)
            if e.type is EventType.REMINDED and e.recipient_id == rid]


def test_reminders_go_on_day_3_and_day_5_once_each_then_the_envelope_expires_on_day_30(tmp_path: Path) -> None:
    store, clock = outbox(tmp_path), FakeClock()
    env = envelope(store, (ANNA,))
    _run_hourly(store, clock, T0 + 29 * DAYS)
    assert _reminder_days(store, env.id, "Anna") == [3, 5]
    assert len(mails(store, env, MailKind.REMINDER)) == 2
    assert store.envelope(env.transaction_id).reminders_sent == 2  # type: ignore[union-attr]
    _run_hourly(store, clock, T0 + 31 * DAYS)
    expired = store.envelope(env.transaction_id)
    assert expired is not None and (expired.state, expired.ended_at, expired.next_due_at) == (
        EnvelopeState.EXPIRED, T0 + 30 * DAYS, None)
    assert [m.recipient_email for m in mails(store, env, MailKind.EXPIRED)] == ["anna@example.com"]
    match = store.recipient_by_token(KEYS.link_token(env.transaction_id, people(store, env)["Anna"].id, 1))
    assert match is not None and not match.live  # the link is dead
    assert store.issue_code(match.recipient.id, clock.now(), KEYS).result.value == "ended"


def test_a_recipient_who_signed_is_not_reminded_and_the_next_step_counts_from_its_invitation(
        tmp_path: Path) -> None:
    store, clock = outbox(tmp_path), FakeClock()
    env = envelope(store)
    sign(store, people(store, env)["Anna"], T0 + 3600)
    _run_hourly(store, clock, T0 + 4 * DAYS)
    sign(store, people(store, env)["Bert"], clock.now())  # step 2 invited on day 4
    _run_hourly(store, clock, T0 + 12 * DAYS)
    assert (_reminder_days(store, env.id, "Anna"), _reminder_days(store, env.id, "Bert")) == ([], [3])
    assert _reminder_days(store, env.id, "Cara") == [7, 9]  # day 4 + 3, + 2


def test_a_reminder_missed_while_the_daemon_was_down_goes_out_once_on_start(tmp_path: Path) -> None:
    store, clock = outbox(tmp_path), FakeClock()
    env = envelope(store, (ANNA,))
    store.close()
    store = outbox(tmp_path)  # the daemon comes back on day 6: two slots passed
    clock.at = T0 + 6 * DAYS
    _scheduler_pass(store, clock)
    _scheduler_pass(store, clock)
    assert _reminder_days(store, env.id, "Anna") == [6]
    assert store.envelope(env.transaction_id).next_due_at == T0 + 8 * DAYS  # type: ignore[union-attr]
    _run_hourly(store, clock, T0 + 20 * DAYS)
    assert _reminder_days(store, env.id, "Anna") == [6, 8]


def test_the_mail_queue_sends_oldest_first_and_forgets_a_sealed_code_once_sent(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store, (ANNA, CARA))
    first = store.next_mail(T0)
    assert first is not None and first.kind is MailKind.INVITATION and first.recipient_email == "anna@example.com"
    assert (first.transaction_id, first.language) == (env.transaction_id, "en")
    store.issue_code(first.recipient_id or 0, T0, KEYS)
    sent = store.mark_mail_sent(first.id, T0 + 1)
    assert (sent.state, sent.sent_at) == (MailState.SENT, T0 + 1)
    assert store.mark_mail_sent(first.id, T0 + 2) == sent  # twice: nothing more
    code_mail = store.next_mail(T0 + 1)
    assert code_mail is not None and code_mail.kind is MailKind.CODE and code_mail.sealed is not None
    assert store.mark_mail_sent(code_mail.id, T0 + 2).sealed is None
    assert store.next_mail(T0 + 2) is None and store.next_mail_at() is None
    assert [e.detail for e in store.timeline(env.id) if e.type is EventType.MAIL_SENT] == [
        f"invitation {first.message_id}", f"code {code_mail.message_id}"]


def test_a_relay_down_backs_off_and_a_permanent_refusal_is_recorded_on_the_recipient(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    env = envelope(store, (ANNA,))
    mail = store.next_mail(T0)
    assert mail is not None
    later = store.mark_mail_failed(mail.id, "connection refused", T0, permanent=False)
    assert (later.state, later.attempts, later.next_attempt_at, later.last_error) == (
        MailState.PENDING, 1, T0 + 30, "connection refused")
    assert store.next_mail(T0 + 29) is None and store.next_mail_at() == T0 + 30
    assert store.next_mail(T0 + 30) == later
    store.mark_mail_failed(mail.id, "451 try later", T0 + 30, permanent=False)
    assert store.next_mail(T0 + 89) is None and store.next_mail(T0 + 90) is not None
    rejected = store.mark_mail_failed(mail.id, "550 5.1.1 mailbox unknown", T0 + 90, permanent=True)
    assert (rejected.state, rejected.attempts) == (MailState.REJECTED, 3)
    assert people(store, env)["Anna"].mail_error == "550 5.1.1 mailbox unknown"
    [event] = [e for e in store.timeline(env.id) if e.type is EventType.MAIL_REJECTED]
    assert event.detail == "invitation: 550 5.1.1 mailbox unknown"
    assert store.mark_mail_failed(mail.id, "again", T0 + 91, permanent=True) == rejected


def test_the_scheduler_knows_when_to_wake_up(tmp_path: Path) -> None:
    store = outbox(tmp_path)
    assert store.next_envelope_due_at() is None
    envelope(store, (ANNA,))
    assert store.next_envelope_due_at() == T0 + 3 * DAYS
    assert store.due_envelopes(T0 + 3 * DAYS - 1) == []
