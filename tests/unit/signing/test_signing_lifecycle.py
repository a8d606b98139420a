"""The envelope's pure rules: due times for reminders and expiry, state transitions, mail back-off."""

from __future__ import annotations

import pytest

from sfsign.signing.lifecycle import (
    DAY,
    EnvelopePolicy,
    ReminderPolicy,
    SystemClock,
    envelope_due_at,
    envelope_state,
    expiry_time,
    first_reminder_at,
    mail_retry_at,
    may_remind,
    next_reminder_at,
    step_complete,
)
from sfsign.signing.model import AuthMethod, EnvelopeState, RecipientState

T0 = 1_800_000_000.0
W, INV, V, S, R = (RecipientState.WAITING, RecipientState.INVITED, RecipientState.VIEWED, RecipientState.SIGNED,
                 RecipientState.REFUSED)


def _reminder_days(policy: EnvelopePolicy, sent_on_days: list[float] | None = None) -> list[float]:
    """The days (after the invitation) reminders go out when each goes out on time (or on the given days)."""
    expires = expiry_time(policy, T0)
    due = first_reminder_at(policy.reminders, T0, expires)
    days: list[float] = []
    while due is not None:
        at = T0 + sent_on_days[len(days)] * DAY if sent_on_days else due
        days.append((at - T0) / DAY)
        due = next_reminder_at(policy.reminders, len(days), at, expires)
    return days


def test_the_defaults_are_email_otp_30_days_and_reminders_on_day_3_and_day_5() -> None:
    policy = EnvelopePolicy()
    assert (policy.auth, policy.expires_after_s, policy.language) == (AuthMethod.EMAIL_OTP, 30 * DAY, "en")
    assert expiry_time(policy, T0) == T0 + 30 * DAY
    assert _reminder_days(policy) == [3, 5]


def test_no_reminder_at_or_after_the_expiry() -> None:
    assert _reminder_days(EnvelopePolicy(expires_after_s=4 * DAY)) == [3]
    assert _reminder_days(EnvelopePolicy(expires_after_s=5 * DAY)) == [3]  # day 5 is the expiry itself
    assert _reminder_days(EnvelopePolicy(expires_after_s=3 * DAY)) == []


def test_reminders_missed_while_down_go_out_once_then_count_from_then() -> None:
    # Down from day 2 to day 6: one reminder on day 6 (not two for the two missed slots), the next 2 days later.
    assert _reminder_days(EnvelopePolicy(), sent_on_days=[6, 8]) == [6, 8]
    assert next_reminder_at(ReminderPolicy(), 1, T0 + 6 * DAY, T0 + 30 * DAY) == T0 + 8 * DAY


def test_a_rule_can_change_the_pattern_or_turn_reminders_off() -> None:
    weekly = EnvelopePolicy(reminders=ReminderPolicy(first_after_s=7 * DAY, every_s=7 * DAY, max_count=3))
    assert _reminder_days(weekly) == [7, 14, 21]
    assert _reminder_days(EnvelopePolicy(reminders=ReminderPolicy(max_count=0))) == []


@pytest.mark.parametrize("bad", [
    lambda: ReminderPolicy(first_after_s=0), lambda: ReminderPolicy(every_s=-1), lambda: ReminderPolicy(max_count=-1),
    lambda: EnvelopePolicy(expires_after_s=0),
])
def test_nonsense_policies_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        bad()  # type: ignore[operator]


@pytest.mark.parametrize(("state", "step", "envelope", "expected"), [
    (INV, 1, EnvelopeState.SENT, True),
    (V, 1, EnvelopeState.VIEWED, True),
    (W, 2, EnvelopeState.PARTIALLY_SIGNED, False),  # a later step: not invited yet
    (INV, 2, EnvelopeState.SENT, False),  # not the current step
    (S, 1, EnvelopeState.PARTIALLY_SIGNED, False),
    (R, 1, EnvelopeState.REFUSED, False),
    (INV, 1, EnvelopeState.VOIDED, False),
    (INV, 1, EnvelopeState.EXPIRED, False),
])
def test_only_recipients_of_the_current_step_who_have_not_answered_are_reminded(
        state: RecipientState, step: int, envelope: EnvelopeState, expected: bool) -> None:
    assert may_remind(state, step, 1, envelope) is expected


@pytest.mark.parametrize(("states", "expected"), [
    ([INV, INV, W], EnvelopeState.SENT),
    ([V, INV, W], EnvelopeState.VIEWED),
    ([S, V, W], EnvelopeState.PARTIALLY_SIGNED),
    ([S, S, INV], EnvelopeState.PARTIALLY_SIGNED),
    ([S, S, S], EnvelopeState.COMPLETED),
    ([S, R, W], EnvelopeState.REFUSED),
])
def test_the_envelope_state_follows_its_recipients(states: list[RecipientState], expected: EnvelopeState) -> None:
    assert envelope_state(states) is expected


def test_a_step_is_complete_when_all_its_signers_signed() -> None:
    assert step_complete([S, S]) and not step_complete([S, V]) and not step_complete([S, R])


def test_the_envelope_is_due_at_its_expiry_or_earliest_reminder_and_never_once_ended() -> None:
    assert envelope_due_at(T0 + 30, [T0 + 3, None, T0 + 5], EnvelopeState.SENT) == T0 + 3
    assert envelope_due_at(T0 + 30, [None], EnvelopeState.VIEWED) == T0 + 30
    assert envelope_due_at(T0 + 30, [T0 + 3], EnvelopeState.VOIDED) is None


def test_a_mail_the_relay_refused_for_now_backs_off_to_hourly() -> None:
    waits = [mail_retry_at(n, T0) - T0 for n in (1, 2, 3, 8, 1000)]
    assert waits == [30, 60, 120, 3600, 3600]


def test_the_system_clock_is_wall_time() -> None:
    assert abs(SystemClock().now() - __import__("time").time()) < 60
