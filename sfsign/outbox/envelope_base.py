"""The write path every envelope step shares: rows read inside the step's own transaction, the timeline event
written with each change, mails queued with their Message-ID, and the due times kept in step.

A step opens `BEGIN IMMEDIATE` (`JobChanges._transaction`) and reads what it decides on inside it, never
from the value its caller holds: two requests of one signer (a double click) are serialised by SQLite and
the second sees what the first wrote.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from sfsign.outbox.changes import JobChanges
from sfsign.outbox.envelope_models import Envelope, EnvelopeEvent, MailState, QueuedMail, Recipient, Visit
from sfsign.outbox.models import JobState, StepAudit, audit_time
from sfsign.signing.lifecycle import RECORD_EVENTS, SIGNATURE_EVENT_TYPES, EventType, envelope_due_at
from sfsign.signing.model import EnvelopeState, MailKind, RecipientState
from sfsign.signing.tokens import LinkKeys

_NO_VISIT = Visit()
#: Mails that only make sense while the envelope is live: cancelled when it ends before they went out.
LIVE_ONLY_MAILS = (MailKind.INVITATION, MailKind.CODE, MailKind.REMINDER)
#: Recipients who hold a link (told of the envelope's end; a `waiting` one never heard of it).
LINKED_STATES = (RecipientState.INVITED, RecipientState.VIEWED, RecipientState.SIGNED)
#: Job states in which a job waits on its envelope: the envelope's steps move it (`_move_job`).
_WAITING_ON_ENVELOPE = frozenset({JobState.AWAITING_SIGNATURES.value, JobState.SIGNATURES_DUE.value})

_MAIL_SELECT = (
    "SELECT m.*, e.transaction_id AS transaction_id, e.language AS language, r.name AS recipient_name, "
    "r.email AS recipient_email, r.token_generation AS token_generation FROM mails m "
    "JOIN envelopes e ON e.id = m.envelope_id LEFT JOIN recipients r ON r.id = m.recipient_id"
)


class EnvelopeBase(JobChanges):
    """Reads and the shared write helpers of the envelope steps (`envelopes`, `envelope_codes`, `envelope_queue`)."""

    #: Mails queued by this store so far (rolled-back ones included): the async face compares it after each
    #: call to wake the mail loop (`Outbox.mail_hooks`) without every step having to say it queued one.
    mails_queued: int = 0

    # -------------------------------------------------------------------------------------- reads

    def _dicts(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cur = self.db.conn.execute(sql, list(args))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def _envelope(self, envelope_id: int) -> Envelope:
        [row] = self._dicts("SELECT * FROM envelopes WHERE id = ?", [envelope_id])
        return Envelope.from_row(row)

    def _recipient(self, recipient_id: int) -> Recipient:
        rows = self._dicts("SELECT * FROM recipients WHERE id = ?", [recipient_id])
        if not rows:
            raise KeyError(f"no recipient {recipient_id}")
        return Recipient.from_row(rows[0])

    def _recipients(self, envelope_id: int) -> list[Recipient]:
        rows = self._dicts("SELECT * FROM recipients WHERE envelope_id = ? ORDER BY step, position", [envelope_id])
        return [Recipient.from_row(r) for r in rows]

    def _mail(self, mail_id: int) -> QueuedMail:
        rows = self._dicts(f"{_MAIL_SELECT} WHERE m.id = ?", [mail_id])
        if not rows:
            raise KeyError(f"no mail {mail_id}")
        return QueuedMail.from_row(rows[0])

    def _mails(self, where: str, args: Iterable[Any], limit: int = 1000) -> list[QueuedMail]:
        rows = self._dicts(f"{_MAIL_SELECT} WHERE {where} ORDER BY m.next_attempt_at, m.id LIMIT ?", [*args, limit])
        return [QueuedMail.from_row(r) for r in rows]

    def _events(self, envelope_id: int) -> list[EnvelopeEvent]:
        rows = self._dicts("SELECT * FROM envelope_events WHERE envelope_id = ? ORDER BY id", [envelope_id])
        return [EnvelopeEvent.from_row(r) for r in rows]

    # ------------------------------------------------------------------- writes (inside a transaction)

    def _update(self, conn: sqlite3.Connection, table: str, row_id: int, changes: dict[str, object]) -> None:
        sets = ", ".join(f"{k} = ?" for k in changes)
        conn.execute(f"UPDATE {table} SET {sets} WHERE id = ?", [*changes.values(), row_id])

    def _event(self, conn: sqlite3.Connection, envelope: Envelope, kind: EventType, at: float, *,
               recipient_id: int | None = None, visit: Visit = _NO_VISIT, detail: str | None = None,
               actor: str | None = None) -> None:
        """The timeline line; for an event the record's audit trail shows, its audit row (sent to
        `Signature_Event__c` by the relay or along with a record write); for one that changes what the record
        shows, a new `version` for the record mirror. All in the caller's transaction."""
        conn.execute(
            "INSERT INTO envelope_events (envelope_id, type, at, recipient_id, ip, user_agent, auth_method, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (envelope.id, kind.value, at, recipient_id, visit.ip, visit.user_agent, envelope.auth_method.value,
             detail),
        )
        if kind in RECORD_EVENTS:
            conn.execute("UPDATE envelopes SET version = version + 1 WHERE id = ?", (envelope.id,))
        event_type = SIGNATURE_EVENT_TYPES.get(kind)
        if event_type is None:
            return
        recipient = self._recipient(recipient_id) if recipient_id is not None else None
        if actor is None:
            actor = (recipient.salesforce_id or f"recipient {recipient.id}") if recipient is not None else "sfsign"
        self._audit_row(envelope.transaction_id, envelope.sobject, envelope.record_id, event_type, actor,
                        audit_detail(envelope, recipient, detail), occurred=audit_time(at))

    def _queue_mail(self, conn: sqlite3.Connection, envelope: Envelope, recipient_id: int | None, kind: MailKind,
                    at: float, *, secret: str | None = None, keys: LinkKeys | None = None) -> int:
        """Queue a mail with its Message-ID fixed now. A `secret` (a code) goes in sealed by `keys` under the
        Message-ID, so the row carries it without holding it."""
        message_id = f"<{secrets.token_hex(16)}@{envelope.message_domain}>"
        sealed = None
        if secret is not None:
            if keys is None:
                raise ValueError("a mail with a secret needs the link keys to seal it")
            sealed = keys.seal(secret, message_id)
        cur = conn.execute(
            "INSERT INTO mails (envelope_id, recipient_id, kind, message_id, state, attempts, next_attempt_at, "
            "created_at, sealed) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
            (envelope.id, recipient_id, kind.value, message_id, MailState.PENDING.value, at, at, sealed),
        )
        self.mails_queued += 1
        return int(cur.lastrowid or 0)

    def _cancel_live_mails(self, conn: sqlite3.Connection, envelope_id: int, recipient_id: int | None = None,
                           kinds: Iterable[MailKind] = LIVE_ONLY_MAILS) -> None:
        names = [k.value for k in kinds]
        conn.execute(
            f"UPDATE mails SET state = ?, sealed = NULL WHERE envelope_id = ? AND state = ? "
            f"AND kind IN ({', '.join('?' for _ in names)})"
            + (" AND recipient_id = ?" if recipient_id is not None else ""),
            [MailState.CANCELLED.value, envelope_id, MailState.PENDING.value, *names,
             *([recipient_id] if recipient_id is not None else [])],
        )

    def _tell_linked(self, conn: sqlite3.Connection, envelope: Envelope, kind: MailKind, at: float,
                     but: int | None = None) -> None:
        """Queue `kind` to every recipient who holds a link (all but `but`)."""
        for r in self._recipients(envelope.id):
            if r.state in LINKED_STATES and r.id != but:
                self._queue_mail(conn, envelope, r.id, kind, at)

    def _resend(self, conn: sqlite3.Connection, envelope: Envelope, recipient_id: int, now: float, actor: str,
                detail: str | None = None) -> int:
        """The invitation again, inside the caller's transaction; the new mail's id."""
        self._cancel_live_mails(conn, envelope.id, recipient_id, (MailKind.INVITATION,))
        mail_id = self._queue_mail(conn, envelope, recipient_id, MailKind.INVITATION, now)
        self._event(conn, envelope, EventType.RESENT, now, recipient_id=recipient_id,
                    detail=detail or f"by {actor}", actor=actor)
        self._update(conn, "envelopes", envelope.id, {"updated_at": now})
        return mail_id

    def _end(self, conn: sqlite3.Connection, envelope: Envelope, state: EnvelopeState, now: float,
             reason: str | None) -> None:
        """The envelope's final state: links die, pending invitations, codes and reminders are cancelled."""
        changes: dict[str, object] = {"state": state.value, "ended_at": now, "reason": reason}
        if state is EnvelopeState.COMPLETED:
            changes["completed_at"] = now
        self._update(conn, "envelopes", envelope.id, changes)
        self._cancel_live_mails(conn, envelope.id)
        if state is not EnvelopeState.COMPLETED:  # completed: the signature that completed it made the job due
            detail = f"envelope {state.value}" + (f": {reason}" if reason else "")
            self._move_job(conn, envelope, {"state": JobState.ENVELOPE_ENDED, "done_at": time.time()},
                           StepAudit(detail))

    def _move_job(self, conn: sqlite3.Connection, envelope: Envelope, changes: dict[str, object],
                  audit: StepAudit | None) -> None:
        """Move the envelope's job, in the envelope step's own transaction, when it waits on its envelope
        (`awaiting_signatures` or `signatures_due`); a job in any other state is left as it is."""
        if envelope.job_id is None:
            return
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (envelope.job_id,)).fetchone()
        if row is not None and row[0] in _WAITING_ON_ENVELOPE:
            self._apply(conn, envelope.job_id, changes, audit)

    def _refresh_due(self, conn: sqlite3.Connection, envelope_id: int, at: float) -> Envelope:
        """Recompute the envelope's next due time from its expiry and its recipients' reminders (all cleared
        when it ended), stamp `updated_at`, and return it as it now is."""
        envelope = self._envelope(envelope_id)
        if envelope.ended:
            conn.execute("UPDATE recipients SET next_reminder_at = NULL WHERE envelope_id = ?", (envelope_id,))
        reminders = [r.next_reminder_at for r in self._recipients(envelope_id)]
        due = envelope_due_at(envelope.expires_at, reminders, envelope.state)
        self._update(conn, "envelopes", envelope_id, {"next_due_at": due, "updated_at": at})
        return self._envelope(envelope_id)


def audit_detail(envelope: Envelope, recipient: Recipient | None, detail: str | None) -> str:
    """An envelope event as the record's audit trail says it: who (the recipient by id, their Salesforce id
    and step, never their address), then what the timeline adds (a decline's reason, a void's, a count)."""
    who = ""
    if recipient is not None:
        ref = f" ({recipient.salesforce_id})" if recipient.salesforce_id else ""
        who = f"recipient {recipient.id}{ref}, step {recipient.step} of {envelope.steps}"
    return ": ".join(p for p in (who, detail) if p)
