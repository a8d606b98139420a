"""The named steps of an envelope's life, one method each, and the reads of the envelopes.

Each step is one SQLite transaction that writes the change, its timeline event and the mails it queues, so
after a crash either all of it happened or none: a step re-run after a restart finds what the first run did
and does nothing again. That is what makes these exactly once:
- an envelope per transaction id (a second `create_envelope` returns the first);
- an invitation per recipient and step: only a `waiting` recipient is invited, and the step that invites
  the next one is the signature that completed the current one, once;
- a signature per recipient: a second `mark_signed` (a double click, a re-posted form) records nothing and
  answers `already_signed`.

The worker (`sfsign.envelope_steps`, through `envelope_jobs`) and the signing listener drive it; a signature
makes the envelope's job due and an envelope's end ends it, in the same transaction (`EnvelopeBase._move_job`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from sfsign.outbox.envelope_base import EnvelopeBase
from sfsign.outbox.envelope_models import (
    Envelope,
    EnvelopeEvent,
    QueuedMail,
    Recipient,
    SignerEvidence,
    SignOutcome,
    SignResult,
    TokenMatch,
    Visit,
)
from sfsign.outbox.models import Job, JobState
from sfsign.salesforce.names import REASON_LENGTH
from sfsign.signing.lifecycle import (
    EnvelopePolicy,
    EventType,
    envelope_state,
    expiry_time,
    first_reminder_at,
    step_complete,
)
from sfsign.signing.model import AuthMethod, EnvelopeState, MailKind, RecipientState, ResolvedSigner
from sfsign.signing.tokens import LinkKeys, token_hash

_NO_VISIT = Visit()


class EnvelopeSteps(EnvelopeBase):
    """Envelopes made, viewed, signed, refused, voided, resent; and read."""

    # ------------------------------------------------------------------------------------- making one

    def create_envelope(self, job: Job, signers: Sequence[ResolvedSigner], policy: EnvelopePolicy, now: float,
                        keys: LinkKeys, *, document_sha256: str | None = None) -> Envelope:
        """The job's envelope: its recipients, step 1 `invited` with their invitations queued, later steps
        `waiting`. Called again for the same job (a restart), it returns the envelope made the first time.
        `document_sha256`: the document as sent (default: the job's signed hash, when sealed first)."""
        with self._transaction() as conn:
            return self._create_envelope(conn, job, signers, policy, now, keys, document_sha256)

    def _create_envelope(self, conn: sqlite3.Connection, job: Job, signers: Sequence[ResolvedSigner],
                         policy: EnvelopePolicy, now: float, keys: LinkKeys, document_sha256: str | None) -> Envelope:
        """`create_envelope` inside the caller's transaction (the worker's send step moves its job with it)."""
        steps = sorted({s.step for s in signers})
        if not signers or steps != list(range(1, len(steps) + 1)):
            raise ValueError("an envelope needs signers in steps 1, 2, … without a gap")
        known = conn.execute("SELECT id FROM envelopes WHERE transaction_id = ?", (job.transaction_id,)).fetchone()
        if known is not None:
            return self._envelope(int(known[0]))
        cur = conn.execute(
            "INSERT INTO envelopes (job_id, transaction_id, sobject, record_id, rule, state, current_step, steps, "
            "language, auth_method, reminder_first_s, reminder_every_s, reminder_max, message_domain, created_at, "
            "sent_at, expires_at, document_sha256_before, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.transaction_id, job.sobject, job.record_id, job.rule, EnvelopeState.SENT.value,
             len(steps), policy.language, policy.auth.value, policy.reminders.first_after_s,
             policy.reminders.every_s, policy.reminders.max_count, policy.message_domain, now, now,
             expiry_time(policy, now), document_sha256 or job.sha256, now),
        )
        envelope_id = int(cur.lastrowid or 0)
        for position, signer in enumerate(signers):
            self._add_recipient(conn, envelope_id, job.transaction_id, position, signer, keys)
        envelope = self._envelope(envelope_id)
        self._event(conn, envelope, EventType.SENT, now,
                    detail=f"{len(signers)} signer(s) in {len(steps)} step(s)")
        self._invite_step(conn, envelope, 1, now)
        return self._refresh_due(conn, envelope_id, now)

    def _add_recipient(self, conn: sqlite3.Connection, envelope_id: int, transaction_id: str, position: int,
                       signer: ResolvedSigner, keys: LinkKeys) -> None:
        cur = conn.execute(
            "INSERT INTO recipients (envelope_id, step, position, name, email, source, salesforce_id, role, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (envelope_id, signer.step, position, signer.name, signer.email, signer.source.value,
             signer.salesforce_id, signer.role, RecipientState.WAITING.value),
        )
        recipient_id = int(cur.lastrowid or 0)
        token = keys.link_token(transaction_id, recipient_id, 1)
        conn.execute("UPDATE recipients SET token_hash = ? WHERE id = ?", (token_hash(token), recipient_id))

    def _invite_step(self, conn: sqlite3.Connection, envelope: Envelope, step: int, now: float) -> tuple[int, ...]:
        """Make `step` current and invite its `waiting` recipients (only those: a step is invited once)."""
        invited = [r.id for r in self._recipients(envelope.id) if r.step == step and r.state is RecipientState.WAITING]
        first = first_reminder_at(envelope.reminders, now, envelope.expires_at)
        for recipient_id in invited:
            self._update(conn, "recipients", recipient_id, {
                "state": RecipientState.INVITED.value, "invited_at": now, "next_reminder_at": first})
            self._queue_mail(conn, envelope, recipient_id, MailKind.INVITATION, now)
            self._event(conn, envelope, EventType.INVITED, now, recipient_id=recipient_id)
        self._update(conn, "envelopes", envelope.id, {"current_step": step})
        return tuple(invited)

    # ------------------------------------------------------------------------------ what signers do

    def mark_recipient_viewed(self, recipient_id: int, now: float, visit: Visit = _NO_VISIT) -> Recipient:
        """The recipient opened their link: the first time moves them (and a `sent` envelope) to `viewed`.
        Later visits, and a visit of a recipient not yet or no longer to act, change nothing."""
        with self._transaction() as conn:
            recipient = self._recipient(recipient_id)
            envelope = self._envelope(recipient.envelope_id)
            if envelope.ended or recipient.state is not RecipientState.INVITED:
                return recipient
            self._update(conn, "recipients", recipient_id, {"state": RecipientState.VIEWED.value, "viewed_at": now})
            self._event(conn, envelope, EventType.VIEWED, now, recipient_id=recipient_id, visit=visit)
            self._settle(conn, envelope, now)
            return self._recipient(recipient_id)

    def mark_recipient_signed(self, recipient_id: int, evidence: SignerEvidence, now: float) -> SignOutcome:
        """The recipient signed. When that completes their step, the next step is invited (once) or the
        envelope completes. A recipient who signed already gets `already_signed` and nothing is recorded."""
        name = evidence.typed_name.strip()
        if not evidence.consent or not name:
            raise ValueError("a signature needs the signer's typed name and explicit consent")
        with self._transaction() as conn:
            recipient = self._recipient(recipient_id)
            envelope = self._envelope(recipient.envelope_id)
            refusal = self._may_act(envelope, recipient)
            if refusal is not None:
                return SignOutcome(refusal, envelope, recipient)
            self._update(conn, "recipients", recipient_id, {
                "state": RecipientState.SIGNED.value, "signed_at": now, "signed_name": name,
                "ip": evidence.visit.ip, "user_agent": evidence.visit.user_agent, "next_reminder_at": None})
            self._cancel_live_mails(conn, envelope.id, recipient_id)
            self._event(conn, envelope, EventType.SIGNED, now, recipient_id=recipient_id, visit=evidence.visit)
            # The signature goes into the PDF in the worker's pool: its job is due now (wall clock: the job
            # queue's), with this record of the signature, so a crash between the two loses neither.
            self._move_job(conn, envelope, {"state": JobState.SIGNATURES_DUE, "next_attempt_at": time.time()}, None)
            invited: tuple[int, ...] = ()
            peers = [r.state for r in self._recipients(envelope.id) if r.step == recipient.step]
            if step_complete(peers) and recipient.step < envelope.steps:
                invited = self._invite_step(conn, envelope, recipient.step + 1, now)
            envelope = self._settle(conn, envelope, now)
            return SignOutcome(SignResult.SIGNED, envelope, self._recipient(recipient_id), invited)

    def mark_recipient_refused(self, recipient_id: int, reason: str, now: float,
                               visit: Visit = _NO_VISIT) -> SignOutcome:
        """The recipient declined, with a reason: the envelope ends `refused`, the other recipients with a link
        are told. A second call answers `refused` again and records nothing."""
        reason = reason.strip()[:REASON_LENGTH]
        if not reason:
            raise ValueError("declining needs a reason")
        with self._transaction() as conn:
            recipient = self._recipient(recipient_id)
            envelope = self._envelope(recipient.envelope_id)
            refusal = self._may_act(envelope, recipient)
            if refusal is not None:
                return SignOutcome(refusal, envelope, recipient)
            self._update(conn, "recipients", recipient_id, {
                "state": RecipientState.REFUSED.value, "refused_at": now, "reason": reason, "ip": visit.ip,
                "user_agent": visit.user_agent, "next_reminder_at": None})
            self._event(conn, envelope, EventType.REFUSED, now, recipient_id=recipient_id, visit=visit,
                        detail=reason)
            self._end(conn, envelope, EnvelopeState.REFUSED, now, reason)
            self._tell_linked(conn, envelope, MailKind.REFUSED, now, but=recipient_id)
            return SignOutcome(SignResult.REFUSED, self._refresh_due(conn, envelope.id, now),
                               self._recipient(recipient_id))

    def _may_act(self, envelope: Envelope, recipient: Recipient) -> SignResult | None:
        """Why this recipient may not sign or decline now (None: they may). A recipient who answered already
        hears their own answer, whatever became of the envelope since."""
        if recipient.state is RecipientState.SIGNED:
            return SignResult.ALREADY_SIGNED
        if recipient.state is RecipientState.REFUSED:
            return SignResult.REFUSED
        if envelope.ended:
            return SignResult.ENDED
        if recipient.state is RecipientState.WAITING or recipient.step != envelope.current_step:
            return SignResult.NOT_YOUR_TURN
        if envelope.auth_method is AuthMethod.EMAIL_OTP and recipient.authenticated_at is None:
            return SignResult.NOT_AUTHENTICATED
        return None

    def _settle(self, conn: sqlite3.Connection, envelope: Envelope, now: float) -> Envelope:
        """Move the envelope to the state its recipients say; completing it tells every recipient."""
        state = envelope_state(r.state for r in self._recipients(envelope.id))
        if state is not envelope.state:
            if state is EnvelopeState.COMPLETED:
                self._event(conn, envelope, EventType.COMPLETED, now)
                self._end(conn, envelope, state, now, None)
                self._tell_linked(conn, envelope, MailKind.COMPLETED, now)
            else:
                self._update(conn, "envelopes", envelope.id, {"state": state.value})
        return self._refresh_due(conn, envelope.id, now)

    # ------------------------------------------------------------------------ what operators and reps do

    def void(self, transaction_id: str, reason: str, now: float, actor: str = "operator") -> Envelope:
        """End a live envelope `voided` and tell the recipients who hold a link; an ended one stays as it is."""
        reason = reason.strip()[:REASON_LENGTH]
        if not reason:
            raise ValueError("voiding needs a reason")
        with self._transaction() as conn:
            envelope = self._by_transaction(transaction_id)
            if envelope.ended:
                return envelope
            self._event(conn, envelope, EventType.VOIDED, now, detail=f"{actor}: {reason}", actor=actor)
            self._end(conn, envelope, EnvelopeState.VOIDED, now, reason)
            self._tell_linked(conn, envelope, MailKind.VOIDED, now)
            return self._refresh_due(conn, envelope.id, now)

    def resend(self, transaction_id: str, recipient_id: int, now: float, actor: str = "operator") -> QueuedMail:
        """The invitation again: the same link, a new mail with a new Message-ID (an unsent earlier one is
        cancelled). Only for a recipient of a live envelope who holds a link and has not answered."""
        with self._transaction() as conn:
            envelope = self._by_transaction(transaction_id)
            recipient = self._recipient(recipient_id)
            if recipient.envelope_id != envelope.id:
                raise KeyError(f"recipient {recipient_id} is not one of envelope {transaction_id}")
            if envelope.ended or recipient.state not in (RecipientState.INVITED, RecipientState.VIEWED):
                raise ValueError(f"recipient {recipient_id} is {recipient.state.value} in a {envelope.state.value} "
                                 "envelope: there is no invitation to send again")
            return self._mail(self._resend(conn, envelope, recipient_id, now, actor))

    def record_signed_document(self, transaction_id: str, sha256: str, now: float) -> Envelope:
        """The SHA-256 of the document after the last signature (the certificate of completion shows both)."""
        with self._transaction() as conn:
            envelope = self._by_transaction(transaction_id)
            self._update(conn, "envelopes", envelope.id, {"document_sha256_after": sha256, "updated_at": now})
            return self._envelope(envelope.id)

    # ------------------------------------------------------------------------------------------ reads

    def _by_transaction(self, transaction_id: str) -> Envelope:
        envelope = self.envelope(transaction_id)
        if envelope is None:
            raise KeyError(f"no envelope with transaction id {transaction_id!r}")
        return envelope

    def envelope(self, transaction_id: str) -> Envelope | None:
        rows = self._dicts("SELECT * FROM envelopes WHERE transaction_id = ?", [transaction_id])
        return Envelope.from_row(rows[0]) if rows else None

    def envelopes(self, state: EnvelopeState | None = None, limit: int = 50) -> list[Envelope]:
        """Newest first, as an operator reads them."""
        where, args = ("WHERE state = ?", [state.value]) if state else ("", [])
        rows = self._dicts(f"SELECT * FROM envelopes {where} ORDER BY id DESC LIMIT ?", [*args, limit])
        return [Envelope.from_row(r) for r in rows]

    def recipients(self, envelope_id: int) -> list[Recipient]:
        return self._recipients(envelope_id)

    def timeline(self, envelope_id: int) -> list[EnvelopeEvent]:
        return self._events(envelope_id)

    def envelope_mails(self, envelope_id: int) -> list[QueuedMail]:
        return self._mails("m.envelope_id = ?", [envelope_id])

    def recipient_by_token(self, token: str) -> TokenMatch | None:
        """The recipient a link token belongs to, with their envelope (an ended one too: its page says so).
        Whatever the string, it is hashed and looked up: unknown and malformed tokens are one path."""
        rows = self._dicts("SELECT * FROM recipients WHERE token_hash = ?", [token_hash(token)])
        if not rows:
            return None
        recipient = Recipient.from_row(rows[0])
        return TokenMatch(recipient, self._envelope(recipient.envelope_id))

