"""The rules of an envelope's life, as pure functions: which state follows, when a reminder or the expiry falls
due, when a failed mail is tried again.

Nothing here reads a clock, a database or a mailbox: the outbox persists what these functions return and
hands them back what it persisted, so a restart recomputes nothing and a test drives time with a fake
`Clock` instead of sleeping. Due times are absolute (epoch seconds), anchored to what happened (the
invitation, the last reminder), never to when the daemon happened to run: a reminder that fell due while
the daemon was down goes out once when it is back, and the next one counts from then.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from sfsign.salesforce import names
from sfsign.signing.model import ENVELOPE_FINAL, AuthMethod, EnvelopeState, RecipientState

DAY = 86_400.0
#: The defaults of issue 14: expiry after 30 days; reminders after 3 days, then every 2, at most 2 (day 3, day 5).
DEFAULT_EXPIRY_S = 30 * DAY
DEFAULT_FIRST_REMINDER_S = 3 * DAY
DEFAULT_REMINDER_EVERY_S = 2 * DAY
DEFAULT_MAX_REMINDERS = 2
#: A mail the relay refused for now: tried again after 30 s, doubling, at most hourly, for ever (nothing is lost
#: while the relay is down; a permanent refusal ends it).
MAIL_RETRY_FIRST_S = 30.0
MAIL_RETRY_MAX_S = 3_600.0


class Clock(Protocol):
    """Where "now" comes from: the system clock in the daemon, a fake one in tests."""

    def now(self) -> float: ...


class SystemClock:
    """Wall-clock time in epoch seconds: due times are persisted and must mean the same after a restart."""

    def now(self) -> float:
        return time.time()


class EventType(StrEnum):
    """What the envelope timeline records (persisted as the value: never renamed). The certificate of
    completion lists these; the record's `Signature_Event__c` rows are mapped from them."""

    SENT = "sent"  # the envelope exists and its first step's invitations are queued
    INVITED = "invited"  # one recipient invited (its step became current)
    VIEWED = "viewed"  # a recipient first opened their link
    CODE_SENT = "code_sent"
    CODE_FAILED = "code_failed"
    CODE_LOCKED = "code_locked"
    CODE_VERIFIED = "code_verified"
    SIGNED = "signed"
    REFUSED = "refused"  # a recipient declined, with a reason: the envelope ends
    REMINDED = "reminded"
    RESENT = "resent"  # the invitation again (operator or rep), same link, new Message-ID
    MAIL_SENT = "mail_sent"
    MAIL_REJECTED = "mail_rejected"  # the relay refused a recipient for good
    EXPIRED = "expired"
    VOIDED = "voided"
    COMPLETED = "completed"


#: The timeline events the record's audit trail shows (`Signature_Event__c.Event_Type__c`, the package's
#: `ENVELOPE_EVENT_TYPES`). A refusal is `declined` there (a rep reads "refused" as sfsign refusing a request);
#: the fifth wrong code, which locks the recipient, is a `code_failed` like the four before it; an invitation
#: sent again (by a rep's Resend) is a `reminded`, since for the signer it is one. Invitations, codes sent
#: and verified, and the mail log stay on the timeline (the certificate of completion lists them).
SIGNATURE_EVENT_TYPES: dict[EventType, str] = {
    EventType.SENT: names.EVENT_SENT,
    EventType.VIEWED: names.EVENT_VIEWED,
    EventType.CODE_FAILED: names.EVENT_CODE_FAILED,
    EventType.CODE_LOCKED: names.EVENT_CODE_FAILED,
    EventType.SIGNED: names.EVENT_SIGNED,
    EventType.REFUSED: names.EVENT_DECLINED,
    EventType.REMINDED: names.EVENT_REMINDED,
    EventType.RESENT: names.EVENT_REMINDED,
    EventType.EXPIRED: names.EVENT_EXPIRED,
    EventType.VOIDED: names.EVENT_VOIDED,
    EventType.COMPLETED: names.EVENT_COMPLETED,
}
#: The events after which the record shows something new (status, progress, dates, decline reason): each
#: bumps the envelope's `version`, which the record mirror writes out.
RECORD_EVENTS = frozenset({EventType.SENT, EventType.VIEWED, EventType.SIGNED, EventType.REFUSED,
                           EventType.EXPIRED, EventType.VOIDED, EventType.COMPLETED})


@dataclass(frozen=True)
class ReminderPolicy:
    """When a recipient who has not signed is reminded: `first_after_s` after their invitation, then every
    `every_s`, at most `max_count` times; never at or after the envelope's expiry."""

    first_after_s: float = DEFAULT_FIRST_REMINDER_S
    every_s: float = DEFAULT_REMINDER_EVERY_S
    max_count: int = DEFAULT_MAX_REMINDERS

    def __post_init__(self) -> None:
        if self.first_after_s <= 0 or self.every_s <= 0 or self.max_count < 0:
            raise ValueError("reminder delays must be positive and the count not negative")


@dataclass(frozen=True)
class EnvelopePolicy:
    """What a rule says about its envelopes. Persisted on the envelope when it is made, so a rule edited
    later changes new envelopes only. `message_domain` is the right-hand side of the Message-IDs."""

    auth: AuthMethod = AuthMethod.EMAIL_OTP
    expires_after_s: float = DEFAULT_EXPIRY_S
    reminders: ReminderPolicy = field(default_factory=ReminderPolicy)
    language: str = "en"
    message_domain: str = "sfsign.localhost"

    def __post_init__(self) -> None:
        if self.expires_after_s <= 0:
            raise ValueError("expiry must be positive")


def expiry_time(policy: EnvelopePolicy, sent_at: float) -> float:
    return sent_at + policy.expires_after_s


def first_reminder_at(reminders: ReminderPolicy, invited_at: float, expires_at: float) -> float | None:
    """A newly invited recipient's first reminder, or None when none fits before the expiry."""
    if reminders.max_count == 0:
        return None
    due = invited_at + reminders.first_after_s
    return due if due < expires_at else None


def next_reminder_at(reminders: ReminderPolicy, sent_count: int, reminded_at: float,
                     expires_at: float) -> float | None:
    """After the `sent_count`-th reminder went out at `reminded_at`: the next one, or None. Counted from when
    the reminder really went out, so slots missed while the daemon was down are not made up one by one."""
    if sent_count >= reminders.max_count:
        return None
    due = reminded_at + reminders.every_s
    return due if due < expires_at else None


def may_remind(state: RecipientState, step: int, current_step: int, envelope: EnvelopeState) -> bool:
    """Only a recipient of the current step who has a link and has not answered, of a live envelope."""
    return (envelope not in ENVELOPE_FINAL and step == current_step
            and state in (RecipientState.INVITED, RecipientState.VIEWED))


def envelope_state(recipients: Iterable[RecipientState]) -> EnvelopeState:
    """The envelope's state as its recipients' states say (for a live envelope; voided and expired come from
    outside): any refusal ends it, all signed completes it, a signature makes it partially signed, a view
    viewed. It only ever moves forward, since recipients' states do."""
    states = list(recipients)
    if RecipientState.REFUSED in states:
        return EnvelopeState.REFUSED
    if states and all(s is RecipientState.SIGNED for s in states):
        return EnvelopeState.COMPLETED
    if RecipientState.SIGNED in states:
        return EnvelopeState.PARTIALLY_SIGNED
    if RecipientState.VIEWED in states:
        return EnvelopeState.VIEWED
    return EnvelopeState.SENT


def step_complete(states: Iterable[RecipientState]) -> bool:
    """A step is done when every one of its signers signed (signers of one step sign in parallel)."""
    return all(s is RecipientState.SIGNED for s in states)


def envelope_due_at(expires_at: float, reminders: Iterable[float | None], state: EnvelopeState) -> float | None:
    """The envelope's next due time: its expiry or its earliest reminder; none once it ended."""
    if state in ENVELOPE_FINAL:
        return None
    return min([expires_at, *(r for r in reminders if r is not None)])


def mail_retry_at(attempts: int, now: float) -> float:
    """When a mail the relay refused for now (its `attempts`-th failure) is tried again."""
    return now + min(MAIL_RETRY_FIRST_S * 2 ** min(max(attempts - 1, 0), 16), MAIL_RETRY_MAX_S)

