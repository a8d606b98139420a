"""What the envelope tables hold and what their steps answer, as plain values (no SQLite in them), so the
command line, the mailer and the signing listener can name them without opening a database."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, TypeVar

from sfsign.signing.lifecycle import EventType, ReminderPolicy
from sfsign.signing.model import ENVELOPE_FINAL, AuthMethod, EnvelopeState, MailKind, RecipientState, SignerSource

R = TypeVar("R")


def _from_row(cls: type[R], row: dict[str, Any], enums: dict[str, Any]) -> R:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    data = {k: v for k, v in row.items() if k in names}
    for key, enum in enums.items():
        if data.get(key) is not None:
            data[key] = enum(data[key])
    return cls(**data)


class MailState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    REJECTED = "rejected"  # the relay refused it for good
    CANCELLED = "cancelled"  # an invitation, code or reminder of an envelope that ended before it went out


@dataclass(frozen=True)
class Envelope:
    id: int
    job_id: int | None
    transaction_id: str
    sobject: str
    record_id: str
    rule: str
    state: EnvelopeState
    current_step: int
    steps: int
    language: str
    auth_method: AuthMethod
    reminder_first_s: float
    reminder_every_s: float
    reminder_max: int
    message_domain: str
    created_at: float
    expires_at: float
    sent_at: float | None = None
    completed_at: float | None = None
    ended_at: float | None = None
    next_due_at: float | None = None
    reminders_sent: int = 0
    reason: str | None = None
    document_sha256_before: str | None = None
    document_sha256_after: str | None = None
    updated_at: float | None = None
    version: int = 0
    synced_version: int = 0
    mirror_attempts: int = 0
    mirror_next_at: float | None = None
    mirror_error: str | None = None
    notified_at: float | None = None
    notify_attempts: int = 0
    notify_next_at: float | None = None
    notify_error: str | None = None
    purged_at: float | None = None  # its personal data was purged (`outbox.envelope_retention`)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Envelope:
        return _from_row(cls, row, {"state": EnvelopeState, "auth_method": AuthMethod})

    @property
    def ended(self) -> bool:
        """Its links are dead: no page but the final one, no code, no signature."""
        return self.state in ENVELOPE_FINAL

    @property
    def reminders(self) -> ReminderPolicy:
        return ReminderPolicy(self.reminder_first_s, self.reminder_every_s, self.reminder_max)


@dataclass(frozen=True)
class MirrorView:
    """An envelope as its record is to show it: how many of how many signed, the document's title and the
    job's state (for the owner's notification), who declined (their name, for the owner only)."""

    envelope: Envelope
    signed: int
    total: int
    file_title: str | None = None
    job_state: str | None = None
    decliner: str | None = None
    rejected: tuple[Recipient, ...] = ()  # of a live envelope: recipients whose address the relay refused


@dataclass(frozen=True)
class RejectionNotice:
    """A recipient whose address the relay refused, whose record owner has not been told yet."""

    view: MirrorView  # their envelope, as its record shows it
    recipient: Recipient


@dataclass(frozen=True)
class Recipient:
    id: int
    envelope_id: int
    step: int
    position: int
    name: str
    email: str
    source: SignerSource
    state: RecipientState
    salesforce_id: str | None = None
    role: str | None = None
    token_generation: int = 1
    token_hash: str | None = None
    code_mac: str | None = None
    code_expires_at: float | None = None
    code_failures: int = 0
    locked_until: float | None = None
    authenticated_at: float | None = None
    invited_at: float | None = None
    viewed_at: float | None = None
    signed_at: float | None = None
    refused_at: float | None = None
    signed_name: str | None = None
    reason: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    next_reminder_at: float | None = None
    reminders_sent: int = 0
    mail_error: str | None = None
    applied_at: float | None = None  # their signature is in the job's PDF
    mail_rejected_at: float | None = None  # the relay refused their address (the owner is told once)
    rejection_notified_at: float | None = None
    rejection_notify_attempts: int = 0
    rejection_notify_next_at: float | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Recipient:
        return _from_row(cls, row, {"state": RecipientState, "source": SignerSource})


@dataclass(frozen=True)
class EnvelopeEvent:
    """One line of the timeline."""

    id: int
    envelope_id: int
    type: EventType
    at: float
    recipient_id: int | None = None
    ip: str | None = None
    user_agent: str | None = None
    auth_method: str | None = None
    detail: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EnvelopeEvent:
        return _from_row(cls, row, {"type": EventType})


@dataclass(frozen=True)
class QueuedMail:
    """A mail row as the mailer needs it: with its envelope's transaction id, language and the recipient's
    address and link generation (the mailer derives the link token from these: `LinkKeys.link_token`)."""

    id: int
    envelope_id: int
    recipient_id: int | None
    kind: MailKind
    message_id: str
    state: MailState
    attempts: int
    next_attempt_at: float
    created_at: float
    last_error: str | None = None
    sent_at: float | None = None
    sealed: str | None = None
    transaction_id: str = ""
    language: str = "en"
    recipient_name: str | None = None
    recipient_email: str | None = None
    token_generation: int = 1

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> QueuedMail:
        return _from_row(cls, row, {"kind": MailKind, "state": MailState})


@dataclass(frozen=True)
class TokenMatch:
    """The recipient a link belongs to and their envelope, as the signing page needs them."""

    recipient: Recipient
    envelope: Envelope

    @property
    def live(self) -> bool:
        """The link still works: a link of an ended envelope only shows how it ended."""
        return not self.envelope.ended


@dataclass(frozen=True)
class Visit:
    """Where a browser's request came from: kept on the timeline with what it did."""

    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class SignerEvidence:
    """What the signing page collected when the signer signed: the name they typed, the consent they ticked
    (a signature without it is refused), and where they signed from."""

    typed_name: str
    consent: bool
    visit: Visit = Visit()


class SignResult(StrEnum):
    SIGNED = "signed"
    ALREADY_SIGNED = "already_signed"  # a double click or a re-posted form: nothing recorded again
    NOT_YOUR_TURN = "not_your_turn"  # a later step's recipient
    NOT_AUTHENTICATED = "not_authenticated"  # email_otp and no right code yet
    REFUSED = "refused"  # this recipient declined before
    ENDED = "ended"  # the envelope is completed, refused, expired or voided


@dataclass(frozen=True)
class SignOutcome:
    result: SignResult
    envelope: Envelope
    recipient: Recipient
    invited: tuple[int, ...] = ()  # recipients of the next step this signature invited


class CodeResult(StrEnum):
    SENT = "sent"  # a new code is queued (the previous one no longer works)
    VERIFIED = "verified"
    WRONG = "wrong"
    EXPIRED = "expired"  # no code, or older than 10 minutes: ask for a new one
    LOCKED = "locked"
    NOT_NEEDED = "not_needed"  # the envelope's rule signs without a code
    NOT_YOUR_TURN = "not_your_turn"
    ENDED = "ended"


@dataclass(frozen=True)
class CodeOutcome:
    result: CodeResult
    recipient: Recipient
    mail_id: int | None = None  # SENT: the code mail
    locked_until: float | None = None


@dataclass(frozen=True)
class DueOutcome:
    """What one pass over a due envelope did (nothing when another pass already did it)."""

    envelope: Envelope
    expired: bool = False
    reminded: tuple[int, ...] = ()
