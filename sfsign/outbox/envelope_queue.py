"""The envelopes' queues: mails waiting for the relay, and envelopes whose reminder or expiry fell due.

Both are selected by persisted times (`mails.next_attempt_at`, `envelopes.next_due_at`), so a restart picks
up where the last run stopped and a test moves time by passing `now`. A mail's Message-ID was fixed when it
was queued: a mail selected again after a crash (the relay may have taken it just before) goes out with the
same Message-ID, which lets the receiving side see it as the same message.
"""

from __future__ import annotations

import sqlite3

from sfsign.outbox.envelope_base import EnvelopeBase
from sfsign.outbox.envelope_models import DueOutcome, Envelope, MailState, QueuedMail
from sfsign.signing.lifecycle import EventType, mail_retry_at, may_remind, next_reminder_at
from sfsign.signing.model import EnvelopeState, MailKind

ERROR_MAX = 1_000  # a relay's answer, kept on the row: enough to read, never a whole transcript


class EnvelopeQueue(EnvelopeBase):
    """The mail queue and the due envelopes."""

    # ------------------------------------------------------------------------------------- mail

    def next_mail(self, now: float) -> QueuedMail | None:
        """The oldest pending mail due by `now` (a mail failing for now waits for its retry time)."""
        mails = self._mails("m.state = ? AND m.next_attempt_at <= ?", [MailState.PENDING.value, now], limit=1)
        return mails[0] if mails else None

    def next_mail_at(self) -> float | None:
        """When the next pending mail falls due: how long the mailer may sleep."""
        row = self.db.conn.execute("SELECT MIN(next_attempt_at) FROM mails WHERE state = ?",
                                   (MailState.PENDING.value,)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def mark_mail_sent(self, mail_id: int, now: float) -> QueuedMail:
        """The relay took the mail: it leaves the queue and forgets its sealed secret. A mail cancelled while
        it was on its way is recorded as sent too (it went); a second call changes nothing."""
        with self._transaction() as conn:
            mail = self._mail(mail_id)
            if mail.state not in (MailState.PENDING, MailState.CANCELLED):
                return mail
            self._update(conn, "mails", mail_id, {"state": MailState.SENT.value, "sent_at": now, "sealed": None,
                                                  "attempts": mail.attempts + 1})
            envelope = self._envelope(mail.envelope_id)
            self._event(conn, envelope, EventType.MAIL_SENT, now, recipient_id=mail.recipient_id,
                        detail=f"{mail.kind.value} {mail.message_id}")
            return self._mail(mail_id)

    def mark_mail_failed(self, mail_id: int, error: str, now: float, *, permanent: bool) -> QueuedMail:
        """The relay did not take the mail. For now (`permanent=False`: down, busy, 4xx): tried again later,
        backing off, for as long as it takes. For good (5xx for this address): `rejected`, the reason
        recorded on the recipient and on the timeline, so the record and the rep can be told."""
        error = error[:ERROR_MAX]
        with self._transaction() as conn:
            mail = self._mail(mail_id)
            if mail.state is not MailState.PENDING:
                return mail
            attempts = mail.attempts + 1
            if not permanent:
                self._update(conn, "mails", mail_id, {"attempts": attempts, "last_error": error,
                                                      "next_attempt_at": mail_retry_at(attempts, now)})
                return self._mail(mail_id)
            self._update(conn, "mails", mail_id, {"attempts": attempts, "last_error": error, "sealed": None,
                                                  "state": MailState.REJECTED.value})
            envelope = self._envelope(mail.envelope_id)
            if mail.recipient_id is not None:
                self._record_rejection(conn, envelope, mail.recipient_id, error, now)
            self._event(conn, envelope, EventType.MAIL_REJECTED, now, recipient_id=mail.recipient_id,
                        detail=f"{mail.kind.value}: {error}")
            self._update(conn, "envelopes", envelope.id, {"updated_at": now})
            return self._mail(mail_id)

    def _record_rejection(self, conn: sqlite3.Connection, envelope: Envelope, recipient_id: int, error: str,
                          now: float) -> None:
        """The relay refused a recipient's address: kept on the recipient; while the envelope is live, the first
        refusal is also for the record (a new `version`: the mirror writes the note) and for its owner (told
        once: `mail_rejected_at` without `rejection_notified_at`). A later refusal of the same address (a
        reminder) changes only the reply kept."""
        recipient = self._recipient(recipient_id)
        changes: dict[str, object] = {"mail_error": error}
        first = recipient.mail_rejected_at is None and not envelope.ended
        if first:
            changes["mail_rejected_at"] = now
        self._update(conn, "recipients", recipient_id, changes)
        if first:
            conn.execute("UPDATE envelopes SET version = version + 1 WHERE id = ?", (envelope.id,))

    # ------------------------------------------------------------------------------- due envelopes

    def due_envelopes(self, now: float, limit: int = 100) -> list[Envelope]:
        """Live envelopes whose expiry or a reminder fell due by `now`, earliest first."""
        rows = self._dicts("SELECT * FROM envelopes WHERE next_due_at IS NOT NULL AND next_due_at <= ? "
                           "ORDER BY next_due_at, id LIMIT ?", [now, limit])
        return [Envelope.from_row(r) for r in rows]

    def next_envelope_due_at(self) -> float | None:
        """When the next envelope falls due: how long the scheduler may sleep."""
        row = self.db.conn.execute("SELECT MIN(next_due_at) FROM envelopes").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def run_due(self, envelope_id: int, now: float) -> DueOutcome:
        """Do what fell due: expire the envelope (its links die, the recipients with a link are told), or
        send each due reminder once and set the next. Run again, or by a second process, it finds the due
        times moved and does nothing."""
        with self._transaction() as conn:
            envelope = self._envelope(envelope_id)
            if envelope.ended or envelope.next_due_at is None or envelope.next_due_at > now:
                return DueOutcome(envelope)
            if envelope.expires_at <= now:
                self._event(conn, envelope, EventType.EXPIRED, now)
                self._end(conn, envelope, EnvelopeState.EXPIRED, now, None)
                self._tell_linked(conn, envelope, MailKind.EXPIRED, now)
                return DueOutcome(self._refresh_due(conn, envelope_id, now), expired=True)
            reminded: list[int] = []
            for r in self._recipients(envelope_id):
                if r.next_reminder_at is None or r.next_reminder_at > now:
                    continue
                if not may_remind(r.state, r.step, envelope.current_step, envelope.state):
                    self._update(conn, "recipients", r.id, {"next_reminder_at": None})
                    continue
                count = r.reminders_sent + 1
                self._update(conn, "recipients", r.id, {
                    "reminders_sent": count,
                    "next_reminder_at": next_reminder_at(envelope.reminders, count, now, envelope.expires_at)})
                self._queue_mail(conn, envelope, r.id, MailKind.REMINDER, now)
                self._event(conn, envelope, EventType.REMINDED, now, recipient_id=r.id,
                            detail=f"reminder {count} of {envelope.reminder_max}")
                reminded.append(r.id)
            self._update(conn, "envelopes", envelope_id, {"reminders_sent": envelope.reminders_sent + len(reminded)})
            return DueOutcome(self._refresh_due(conn, envelope_id, now), reminded=tuple(reminded))
