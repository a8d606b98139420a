"""What every part of customer signing says about an envelope: its states, its recipients' states, the
ways a signer proves who they are, and a signer as resolved from the record.

Kept apart from the parts (rules, outbox, mailer, listener) so that each can be read, and tested, against
the same names; the states are persisted as their values, so a value is never renamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EnvelopeState(StrEnum):
    """sent → viewed → partially_signed → completed | refused | expired | voided."""

    SENT = "sent"
    VIEWED = "viewed"
    PARTIALLY_SIGNED = "partially_signed"
    COMPLETED = "completed"
    REFUSED = "refused"
    EXPIRED = "expired"
    VOIDED = "voided"


#: States an envelope never leaves: its links are dead, its due times cleared.
ENVELOPE_FINAL = frozenset({EnvelopeState.COMPLETED, EnvelopeState.REFUSED, EnvelopeState.EXPIRED,
                            EnvelopeState.VOIDED})


class RecipientState(StrEnum):
    """waiting → invited → viewed → signed | refused. `waiting`: a later step, not invited yet."""

    WAITING = "waiting"
    INVITED = "invited"
    VIEWED = "viewed"
    SIGNED = "signed"
    REFUSED = "refused"


RECIPIENT_FINAL = frozenset({RecipientState.SIGNED, RecipientState.REFUSED})


class AuthMethod(StrEnum):
    """How a signer proves they are the addressee: a one-time code sent to their e-mail (the default), or
    nothing beyond holding the link (only when a rule says so)."""

    EMAIL_OTP = "email_otp"
    NONE = "none"


class SignerSource(StrEnum):
    """Where a signer came from on the record."""

    CONTACT_ROLE = "contact_role"  # an OpportunityContactRole (primary, or by role name)
    QUOTE_CONTACT = "quote_contact"  # Quote.ContactId
    QUOTE_EMAIL = "quote_email"  # Quote.Email (no contact)
    USER = "user"  # a fixed internal counter-signer (a Salesforce user)


@dataclass(frozen=True)
class ResolvedSigner:
    """One signer of one envelope, as read from the record when the envelope is made.

    `step` is 1-based: steps sign in order, signers of one step in parallel. `salesforce_id` is the
    Contact (003) or User (005) id when there is one; a Quote's bare e-mail has none.
    """

    step: int
    name: str
    email: str
    source: SignerSource
    salesforce_id: str | None = None
    role: str | None = None


class MailKind(StrEnum):
    """The mails an envelope sends. Each queued mail is persisted with its Message-ID before it goes out,
    so a mail sent again after a crash carries the same Message-ID."""

    INVITATION = "invitation"
    CODE = "code"  # the one-time code (email_otp)
    REMINDER = "reminder"
    REFUSED = "refused"  # to the other signers and the sender: someone declined, with the reason
    VOIDED = "voided"
    EXPIRED = "expired"
    COMPLETED = "completed"  # the completed copy, the signed PDF attached unless the rule says otherwise
