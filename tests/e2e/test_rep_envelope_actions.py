"""A rep's Void and Resend (issue 14 part B) through a published `Sign_Request__e`, read by the real daemon over
the real stream: Resend queues every live invitation again (once per request), Void ends the envelope and the
record shows `Voided` with the reason in its audit trail, and a request with nothing out for signature is
refused with a note on the record. The envelope is made through the outbox library before the daemon starts
(its job waits far in the future, so the worker leaves it alone)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from e2e_support import REP, record_id, run_daemon
from e2e_support import until as _until

from sfsign.commands.demo import MAILBOX, local_relay
from sfsign.config import Rules, Settings
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient
from sfsign.localmail.mailbox import Mailbox
from sfsign.outbox import NewJob, Outbox, audit_time
from sfsign.outbox.envelope_models import Envelope, MailState
from sfsign.private_files import private_dir
from sfsign.signing.lifecycle import DAY, EnvelopePolicy, EventType
from sfsign.signing.model import EnvelopeState, MailKind, ResolvedSigner, SignerSource
from sfsign.signing.tokens import LinkKeys

ACME = "Acme Industries - Platform Renewal 2027"
TX = "tx-rep-actions-1"
SIGNERS = (ResolvedSigner(1, "Anna Buyer", "anna@acme-industries.example", SignerSource.CONTACT_ROLE,
                          "003000000000001AAA", "Economic Buyer"),
           ResolvedSigner(1, "Bert Legal", "bert@acme-industries.example", SignerSource.CONTACT_ROLE,
                          "003000000000002AAA", "Legal"))


async def _envelope_before_start(settings: Settings, opportunity: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    outbox = Outbox(private_dir(settings.data_dir) / "outbox.sqlite")
    await outbox.open()
    try:
        [job] = (await outbox.commit_event(None, None, [
            NewJob(TX, "opportunity-proposal", "Opportunity", opportunity, "event")])).created
        job = await outbox.mark_fetched(job, document_json="{}", file_title="Proposal Acme", file_name="P.pdf")
        job = await outbox.defer(job, time.time() + 365 * DAY)
        await outbox.mark_pending_shown([job.id], time.time())
        await outbox.create_envelope(job, SIGNERS, EnvelopePolicy(), now, LinkKeys(b"a" * 32))
    finally:
        await outbox.close()


async def _events(control: ControlClient, opportunity: str, event_type: str) -> list[dict[str, Any]]:
    return await control.query(f"SELECT Detail__c, Actor__c FROM Signature_Event__c WHERE Opportunity__c = "
                               f"'{opportunity}' AND Event_Type__c = '{event_type}' ORDER BY Occurred_At__c")


async def _invitations(daemon: Daemon, envelope: Envelope) -> dict[MailState, int]:
    counts = dict.fromkeys(MailState, 0)
    for mail in await daemon.outbox.envelope_mails(envelope.id):
        if mail.kind is MailKind.INVITATION:
            counts[mail.state] += 1
    return counts


async def test_resend_and_void_from_salesforce_act_on_the_live_envelope_and_nothing_left_is_refused(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    settings = settings.model_copy(update={"audit_flush_s": 0.2})
    opportunity = await record_id(control, "Opportunity", ACME)
    [rep] = await control.query(f"SELECT Id FROM User WHERE Username = '{REP}'")
    await _envelope_before_start(settings, opportunity)

    async def request(**fields: str) -> None:
        await control.publish("Sign_Request__e", {"RecordId__c": opportunity, "RequestedById__c": rep["Id"],
                                                  **fields}, user=REP)

    async def record() -> dict[str, Any]:
        return await control.get("Opportunity", opportunity, ["Sign_Status__c", "Sign_Error__c"])

    # The outbox holds a live envelope: the daemon needs a relay (it sends the invitations, then the resent ones).
    with local_relay(settings) as (settings, _relay):
        await _rep_acts(settings, rules, control, opportunity, rep, request, record)


async def _rep_acts(settings: Settings, rules: Rules, control: ControlClient, opportunity: str, rep: dict[str, Any],
                    request: Any, record: Any) -> None:
    async with run_daemon(settings, rules) as daemon:
        await _until(lambda: _status(record, "Sent"))
        envelope = await daemon.outbox.envelope(TX)
        assert envelope is not None

        await request(Action__c="Resend")
        counts = await _until(lambda: _resent(daemon, envelope))
        # Each signer's invitation again: two more rows (an earlier one the relay had not taken yet is cancelled).
        assert counts[MailState.PENDING] + counts[MailState.SENT] >= 2 and counts[MailState.REJECTED] == 0, counts
        reminded = await _until(lambda: _at_least(control, opportunity, "reminded", 2))
        assert all(f"sent again by rep {rep['Id']}" in r["Detail__c"] for r in reminded)

        await request(Action__c="Void")  # no reason: refused, nothing voided
        [no_reason] = await _until(lambda: _at_least(control, opportunity, "refused", 1))
        assert "Void needs a reason in Reason__c" in no_reason["Detail__c"]

        await request(Action__c="Void", Reason__c="The customer asked for a new price list")
        await _until(lambda: _status(record, "Voided"))
        [voided] = await _until(lambda: _at_least(control, opportunity, "voided", 1))
        assert voided["Detail__c"] == f"rep {rep['Id']}: The customer asked for a new price list"
        ended = await daemon.outbox.envelope(TX)
        assert ended is not None and ended.state is EnvelopeState.VOIDED
        voided_mails = [m for m in await daemon.outbox.envelope_mails(envelope.id) if m.kind is MailKind.VOIDED]
        assert len(voided_mails) == 2, "both signers are told"

        await request(Action__c="Resend")  # nothing out for signature any more
        refused = await _until(lambda: _at_least(control, opportunity, "refused", 2))
        assert "Resend: this Opportunity has no document out for signature, so nothing was sent again" in refused[-1][
            "Detail__c"]
        shown = await _until(lambda: _noted(record))
        assert shown["Sign_Status__c"] == "Voided"
        assert shown["Sign_Error__c"] == ("Resend refused: this Opportunity has no document out for signature, "
                                          "so nothing was sent again.")
        resent = [e for e in await daemon.outbox.timeline(envelope.id) if e.type is EventType.RESENT]
        assert len(resent) == 2, "one request, each signer once"


async def _status(record: Callable[[], Awaitable[dict[str, Any]]], status: str) -> bool:
    return (await record())["Sign_Status__c"] == status


async def _noted(record: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any] | None:
    row = await record()
    return row if row["Sign_Error__c"] else None


async def _resent(daemon: Daemon, envelope: Envelope) -> dict[MailState, int] | None:
    counts = await _invitations(daemon, envelope)
    return counts if sum(counts.values()) == 4 else None


async def _at_least(control: ControlClient, opportunity: str, event_type: str, count: int) -> list[dict[str, Any]]:
    rows = await _events(control, opportunity, event_type)
    return rows if len(rows) >= count else []


class FakeClock:
    """The daemon's envelope clock, moved by the test (by days, without sleeping)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


async def test_void_and_resend_from_salesforce_take_their_time_from_the_envelope_clock(
    settings: Settings, rules: Rules, control: ControlClient
) -> None:
    """The daemon's clock moved by days: a rep's Resend and Void are stamped with the clock's time, not the
    system's, so the timeline stays in order with the reminder the scheduler sent on day 3, the resent
    invitations go out when that clock says they are due, and the record's `voided` row carries that time."""
    settings = settings.model_copy(update={"audit_flush_s": 0.2})
    opportunity = await record_id(control, "Opportunity", ACME)
    [rep] = await control.query(f"SELECT Id FROM User WHERE Username = '{REP}'")
    clock = FakeClock(time.time())
    start = clock.t
    await _envelope_before_start(settings, opportunity, start)

    async def request(**fields: str) -> None:
        await control.publish("Sign_Request__e", {"RecordId__c": opportunity, "RequestedById__c": rep["Id"],
                                                  **fields}, user=REP)

    with local_relay(settings) as (settings, _relay):
        mailbox = Mailbox(settings.data_dir / MAILBOX)
        async with run_daemon(settings, rules, clock=clock) as daemon:
            envelope = await daemon.outbox.envelope(TX)
            assert envelope is not None
            await _until(lambda: _mails_to(mailbox, SIGNERS[0].email, 1))  # the invitation, sent at `start`

            clock.t = start + 1 * DAY  # the rep asks again a day later
            await request(Action__c="Resend")
            resent = await _until(lambda: _timeline(daemon, envelope, EventType.RESENT, 2))
            assert [e.at for e in resent] == [start + DAY] * 2
            # Queued at the clock's time, so the postman (on the same clock) finds them due and sends them.
            await _until(lambda: _mails_to(mailbox, SIGNERS[0].email, 2))

            clock.t = start + 3.5 * DAY  # the first reminder (day 3) falls due
            assert daemon.envelope_due is not None
            daemon.envelope_due.wake()
            reminded = await _until(lambda: _timeline(daemon, envelope, EventType.REMINDED, 2))
            assert [e.at for e in reminded] == [start + 3.5 * DAY] * 2

            clock.t = start + 4 * DAY
            await request(Action__c="Void", Reason__c="Prices changed")
            [voided] = await _until(lambda: _timeline(daemon, envelope, EventType.VOIDED, 1))
            assert voided.at == start + 4 * DAY
            ended = await daemon.outbox.envelope(TX)
            assert ended is not None and ended.state is EnvelopeState.VOIDED and ended.ended_at == start + 4 * DAY
            times = [e.at for e in await daemon.outbox.timeline(envelope.id)]
            assert times == sorted(times), times  # system time would put the Void days before the reminder
            [row] = await _until(lambda: _occurred(control, opportunity, "voided"))
            assert row["Occurred_At__c"][:19] == audit_time(start + 4 * DAY)[:19], row


async def _mails_to(mailbox: Mailbox, address: str, count: int) -> bool:
    return len(await asyncio.to_thread(mailbox.to, address)) >= count


async def _timeline(daemon: Daemon, envelope: Envelope, kind: EventType, count: int) -> list[Any]:
    events = [e for e in await daemon.outbox.timeline(envelope.id) if e.type is kind]
    return events if len(events) >= count else []


async def _occurred(control: ControlClient, opportunity: str, event_type: str) -> list[dict[str, Any]]:
    return await control.query(f"SELECT Occurred_At__c FROM Signature_Event__c WHERE Opportunity__c = "
                               f"'{opportunity}' AND Event_Type__c = '{event_type}'")
