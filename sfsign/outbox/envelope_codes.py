"""One-time codes (`email_otp`): issued into a mail, checked with lockout, one transaction per step.

The rules of issue 14 part 7: 6 digits, valid 10 minutes, kept as an HMAC, compared in constant time; a new
code replaces the one before; 5 wrong tries lock the recipient for 15 minutes (a new code does not reset the
count, so asking for codes buys no tries); a right code is used up and lets the recipient sign. The
constants and the key live in `sfsign.signing.tokens`.
"""

from __future__ import annotations

from sfsign.outbox.envelope_base import EnvelopeBase
from sfsign.outbox.envelope_models import CodeOutcome, CodeResult, Envelope, Recipient, Visit
from sfsign.signing.lifecycle import EventType
from sfsign.signing.model import AuthMethod, MailKind, RecipientState
from sfsign.signing.tokens import CODE_LOCK_S, CODE_MAX_FAILURES, CODE_TTL_S, LinkKeys, new_code

_NO_VISIT = Visit()


class EnvelopeCodes(EnvelopeBase):
    """`issue_code` and `check_code`."""

    def issue_code(self, recipient_id: int, now: float, keys: LinkKeys, visit: Visit = _NO_VISIT) -> CodeOutcome:
        """A new code for the recipient, queued in a code mail (sealed in its row); the previous code, and its
        mail if it has not gone out, are void. Refused while the recipient is locked."""
        with self._transaction() as conn:
            recipient = self._recipient(recipient_id)
            envelope = self._envelope(recipient.envelope_id)
            refusal = _not_for_codes(envelope, recipient, now)
            if refusal is not None:
                return CodeOutcome(refusal, recipient, locked_until=recipient.locked_until)
            code = new_code()
            self._cancel_live_mails(conn, envelope.id, recipient_id, (MailKind.CODE,))
            self._update(conn, "recipients", recipient_id, {
                "code_mac": keys.code_mac(recipient_id, code), "code_expires_at": now + CODE_TTL_S,
                **_unlocked_if_over(recipient, now)})
            mail_id = self._queue_mail(conn, envelope, recipient_id, MailKind.CODE, now, secret=code, keys=keys)
            self._event(conn, envelope, EventType.CODE_SENT, now, recipient_id=recipient_id, visit=visit)
            self._update(conn, "envelopes", envelope.id, {"updated_at": now})
            return CodeOutcome(CodeResult.SENT, self._recipient(recipient_id), mail_id=mail_id)

    def check_code(self, recipient_id: int, code: str, now: float, keys: LinkKeys,
                   visit: Visit = _NO_VISIT) -> CodeOutcome:
        """Whether `code` is the recipient's current code. Right: used up, the recipient may sign. Wrong:
        counted, and the fifth wrong try in a row locks the recipient (and voids the code)."""
        with self._transaction() as conn:
            recipient = self._recipient(recipient_id)
            envelope = self._envelope(recipient.envelope_id)
            refusal = _not_for_codes(envelope, recipient, now)
            if refusal is not None:
                return CodeOutcome(refusal, recipient, locked_until=recipient.locked_until)
            changes = _unlocked_if_over(recipient, now)
            failures = 0 if "code_failures" in changes else recipient.code_failures
            if recipient.code_mac is None or recipient.code_expires_at is None or recipient.code_expires_at <= now:
                result = CodeResult.EXPIRED
            elif keys.code_matches(recipient_id, code, recipient.code_mac):
                result = CodeResult.VERIFIED
                changes.update(code_mac=None, code_expires_at=None, code_failures=0, authenticated_at=now)
                self._event(conn, envelope, EventType.CODE_VERIFIED, now, recipient_id=recipient_id, visit=visit)
            else:
                failures += 1
                changes["code_failures"] = failures
                if failures >= CODE_MAX_FAILURES:
                    result = CodeResult.LOCKED
                    changes.update(locked_until=now + CODE_LOCK_S, code_mac=None, code_expires_at=None)
                    self._event(conn, envelope, EventType.CODE_LOCKED, now, recipient_id=recipient_id, visit=visit,
                                detail=f"{failures} wrong codes")
                else:
                    result = CodeResult.WRONG
                    self._event(conn, envelope, EventType.CODE_FAILED, now, recipient_id=recipient_id, visit=visit,
                                detail=f"wrong code {failures} of {CODE_MAX_FAILURES}")
            if changes:
                self._update(conn, "recipients", recipient_id, changes)
            after = self._recipient(recipient_id)
            return CodeOutcome(result, after, locked_until=after.locked_until)


def _not_for_codes(envelope: Envelope, recipient: Recipient, now: float) -> CodeResult | None:
    if envelope.ended:
        return CodeResult.ENDED
    if envelope.auth_method is AuthMethod.NONE:
        return CodeResult.NOT_NEEDED
    holds_link = recipient.state in (RecipientState.INVITED, RecipientState.VIEWED)
    if not holds_link or recipient.step != envelope.current_step:
        return CodeResult.NOT_YOUR_TURN
    if recipient.locked_until is not None and recipient.locked_until > now:
        return CodeResult.LOCKED
    return None


def _unlocked_if_over(recipient: Recipient, now: float) -> dict[str, object]:
    """A lock that has run out is lifted, and its count of wrong tries with it."""
    if recipient.locked_until is not None and recipient.locked_until <= now:
        return {"locked_until": None, "code_failures": 0}
    return {}
