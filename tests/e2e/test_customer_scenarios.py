"""Issue 14's scenarios as the people in them live them, through the running daemon: a sales rep moves the
Opportunity to its stage, the daemon (`run_daemon`, with the embedded relay and mailbox) sends the document
out for signature, and each customer works from their own mailbox and the signing pages over HTTP (`Person`,
a browser without script): they decline with a reason, let it lie until reminders come and it expires, or
both sign, one of them after a mistyped code. What is asserted is what the rep and the customers see: the
Opportunity and its `Signature_Event__c` rows and Files in the emulator, the owner's custom notifications,
the .eml files in the mailbox, the pages' states.

Every part is real (emulator over HTTPS, outbox, process pool, signatures against the local TSA and OCSP
responder); only time is moved, by the daemon's clock seam (`run_daemon(clock=...)`), for reminders and the
expiry. Both customers are the seeded contacts of the Acme renewal: Claire (the primary contact role) and
Thomas (role "Technical Buyer"), in one step, so they sign in parallel.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import REP, record_id, run_daemon, until
from signer_support import RECORD_FIELDS, Person, check_final, record_files, signer_rules
from signing_site import FakeClock

from sfsign.commands.demo import MAILBOX, daemon_settings
from sfsign.config import Rules, Settings
from sfsign.daemon import Daemon
from sfsign.emulator.control_client import ControlClient
from sfsign.localmail.mailbox import Mailbox
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.pkiserver import PkiServices
from sfsign.outbox import JobState
from sfsign.outbox.envelope_models import Envelope, MailState
from sfsign.salesforce.rest import SalesforceRest
from sfsign.signing.lifecycle import DAY

ACME = "Acme Industries - Platform Renewal 2027"
STAGE = "Proposal/Price Quote"  # the demo rule `opportunity-proposal` (B-LTA)
CLAIRE = ("claire.lefevre@acme-industries.example", "Claire Lefèvre")
THOMAS = ("thomas.moreau@acme-industries.example", "Thomas Moreau")
ON_EXPIRY = "Closed Lost"  # an active value of the seeded org's StageName picklist (the daemon checks at start)
# The defaults otherwise: a code by e-mail, reminders on day 3 and day 5, expiry after 30 days.
BOTH_IN_ONE_STEP = f"""\
    signers:
      steps:
        - [{{contact_role: primary}}, {{contact_role: "Technical Buyer"}}]
      on_expiry: {{stage: "{ON_EXPIRY}"}}
"""
INVITATION, REMINDER, EXPIRED, DECLINED = "Please sign:", "Reminder:", "Expired:", "Declined:"  # mail subjects


@pytest.fixture
def rules(tmp_path: Path, services_pki: tuple[DemoPki, PkiServices, str], monkeypatch: pytest.MonkeyPatch) -> Rules:
    return signer_rules(tmp_path / "rules.yaml", services_pki, BOTH_IN_ONE_STEP, monkeypatch)


@pytest.fixture
def settings(emulator: Any, tmp_path: Path, rules: Rules) -> Settings:
    return daemon_settings(emulator, tmp_path, rules.source, cpu_workers=1, shutdown_grace_s=10, log_level="INFO",
                           audit_flush_s=0.2)


async def _record(control: ControlClient, opportunity: str, status: str) -> dict[str, Any] | None:
    row = await control.get("Opportunity", opportunity, [*RECORD_FIELDS, "Sign_Decline_Reason__c", "StageName"])
    assert row["Sign_Status__c"] != "Error", row
    return row if row["Sign_Status__c"] == status else None


async def _rows(control: ControlClient, opportunity: str, event_type: str) -> list[dict[str, Any]]:
    return await control.query(
        "SELECT Event_Type__c, Actor__c, Detail__c, Transaction_Id__c FROM Signature_Event__c WHERE Opportunity__c = "
        f"'{opportunity}' AND Event_Type__c = '{event_type}' ORDER BY Occurred_At__c")


async def _contact(control: ControlClient, email: str) -> str:
    [row] = await control.query(f"SELECT Id FROM Contact WHERE Email = '{email}'")
    return str(row["Id"])


async def _envelope(daemon: Daemon) -> Envelope | None:
    """The proposal's envelope, once the daemon sent it."""
    jobs = [j for j in await daemon.outbox.jobs() if j.rule == "opportunity-proposal"]
    return await daemon.outbox.envelope(jobs[0].transaction_id) if jobs else None


def _mails(mailbox: Mailbox, subject: str) -> dict[str, int]:
    """How many mails whose subject starts with `subject` each customer's mailbox holds (a long Subject is
    folded after its colon, so the parsed value starts with the fold's space)."""
    return {address: sum(m.subject.lstrip().startswith(subject) for m in mailbox.to(address))
            for address, _ in (CLAIRE, THOMAS)}


async def _delivered(daemon: Daemon, envelope: Envelope) -> bool:
    """Every mail the envelope queued has left for the relay (none pending): the mailbox holds all there is."""
    return all(m.state is not MailState.PENDING for m in await daemon.outbox.envelope_mails(envelope.id))


async def _owner_notes(control: ControlClient, daemon: Daemon, opportunity: str, envelope: Envelope,
                       ) -> list[dict[str, Any]]:
    """The owner's notifications about the record once the envelope's outcome was notified, after one more
    pass of the record mirror (which would send a second one, if it ever did)."""
    await until(lambda: _notified(daemon, envelope))
    assert daemon.envelope_mirror is not None
    await daemon.envelope_mirror.pass_once()
    return [n for n in await control.notifications() if n["targetId"] == opportunity]


async def _notified(daemon: Daemon, envelope: Envelope) -> bool:
    now = await daemon.outbox.envelope(envelope.transaction_id)
    return now is not None and now.notified_at is not None


async def test_a_customer_declines_on_the_signing_page_and_the_record_shows_refused_with_the_reason(
    settings: Settings, rules: Rules, control: ControlClient,
) -> None:
    reason = "Our budget for 2027 is frozen until the board meets in March"
    opportunity = await record_id(control, "Opportunity", ACME)
    owner = (await control.get("Opportunity", opportunity, ["OwnerId"]))["OwnerId"]
    async with run_daemon(settings, rules) as daemon:
        mailbox = daemon.settings.data_dir / MAILBOX
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        async with Person(mailbox, *CLAIRE) as claire:
            assert claire.state == "code"  # the document only after the code
            assert await claire.enter_code(await claire.ask_code()) == "sign"
            assert await claire.decline(reason) == "you_declined"

        record = await until(lambda: _record(control, opportunity, "Refused"))
        assert record["Sign_Decline_Reason__c"] == reason, record
        assert record["Sign_Progress__c"] == "0 of 2 signed", record
        [declined] = await until(lambda: _rows(control, opportunity, "declined"))
        contact = await _contact(control, CLAIRE[0])
        assert declined["Actor__c"] == contact and declined["Transaction_Id__c"] == record["Sign_Transaction_Id__c"]
        assert declined["Detail__c"].endswith(f" ({contact}), step 1 of 1: {reason}"), declined
        assert "@" not in declined["Detail__c"], "recipients by id, never by address"

        [job] = [j for j in await daemon.outbox.jobs() if j.rule == "opportunity-proposal"]
        envelope = await daemon.outbox.envelope(job.transaction_id)
        assert envelope is not None
        [note] = await _owner_notes(control, daemon, opportunity, envelope)
        assert (note["title"], note["deliveredTo"]) == (f"Signature declined: {job.file_title}", [owner])
        assert note["body"] == f"Claire Lefèvre declined to sign. Reason: {reason}"
        # Thomas, who signs in the same step, is told; his link now says so.
        await until(lambda: _delivered(daemon, envelope))
        assert await asyncio.to_thread(_mails, Mailbox(mailbox), DECLINED) == {CLAIRE[0]: 0, THOMAS[0]: 1}
        async with Person(mailbox, *THOMAS) as thomas:
            assert thomas.state == "declined"
        ended = await daemon.outbox.get(job.id)
        assert ended.state is JobState.ENVELOPE_ENDED and ended.content_version_id is None, ended
    assert await record_files(control, opportunity) == [], "a refused document is never put on the record"
    after = await control.get("Opportunity", opportunity, RECORD_FIELDS)
    assert after["Sign_Status__c"] == "Refused" and after["Signed_Document_Id__c"] is None, after


async def _due_pass(daemon: Daemon) -> None:
    """Wake the daemon's reminder/expiry scheduler and wait until it finished a pass (at the clock's time)."""
    due = daemon.envelope_due
    assert due is not None
    passes = due.passes

    async def passed() -> bool:
        return due.passes > passes

    due.wake()
    await until(passed)


async def test_reminders_on_day_three_and_five_once_each_then_the_expiry_moves_the_stage_and_tells_the_owner(
    settings: Settings, rules: Rules, control: ControlClient,
) -> None:
    opportunity = await record_id(control, "Opportunity", ACME)
    owner = (await control.get("Opportunity", opportunity, ["OwnerId"]))["OwnerId"]
    clock = FakeClock(time.time())
    start = clock.t
    async with run_daemon(settings, rules, clock=clock) as daemon:
        mailbox = Mailbox(daemon.settings.data_dir / MAILBOX)
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)
        envelope = await until(lambda: _envelope(daemon))
        assert envelope.sent_at == start, "sent at the daemon's clock, which the due times count from"
        await until(lambda: _record(control, opportunity, "Sent"))
        await until(lambda: _delivered(daemon, envelope))
        assert await asyncio.to_thread(_mails, mailbox, INVITATION) == {CLAIRE[0]: 1, THOMAS[0]: 1}

        for day, reminders in ((2.9, 0), (3, 1), (4, 1), (5, 2), (29.9, 2)):
            clock.t = start + day * DAY
            await _due_pass(daemon)
            await _due_pass(daemon)  # a second pass on the same day sends nothing more
            await until(lambda: _delivered(daemon, envelope))
            counted = await asyncio.to_thread(_mails, mailbox, REMINDER)
            assert counted == {CLAIRE[0]: reminders, THOMAS[0]: reminders}, f"day {day}: {counted}"

        clock.t = start + 30 * DAY
        await _due_pass(daemon)
        expired = await until(lambda: _record(control, opportunity, "Expired"))
        assert (expired["StageName"], expired["Sign_Progress__c"]) == (ON_EXPIRY, "0 of 2 signed"), expired
        [row] = await until(lambda: _rows(control, opportunity, "expired"))
        assert row["Transaction_Id__c"] == envelope.transaction_id
        reminded = await _rows(control, opportunity, "reminded")
        contacts = [await _contact(control, address) for address, _ in (CLAIRE, THOMAS)]
        assert sorted(r["Actor__c"] for r in reminded) == sorted(contacts * 2), reminded

        job = await daemon.outbox.by_transaction(envelope.transaction_id)
        assert job is not None and job.state is JobState.ENVELOPE_ENDED, job
        [note] = await _owner_notes(control, daemon, opportunity, envelope)
        assert (note["title"], note["deliveredTo"]) == (f"Signature request expired: {job.file_title}", [owner])
        assert note["body"] == f"The invitation to sign expired with 0 of 2 signed. The StageName is now {ON_EXPIRY}."
        await until(lambda: _delivered(daemon, envelope))
        assert await asyncio.to_thread(_mails, mailbox, EXPIRED) == {CLAIRE[0]: 1, THOMAS[0]: 1}
        assert await asyncio.to_thread(_mails, mailbox, REMINDER) == {CLAIRE[0]: 2, THOMAS[0]: 2}
        async with Person(mailbox.directory, *CLAIRE) as claire:  # her link, from the newest mail that has it
            assert claire.state == "expired"
    assert await record_files(control, opportunity) == []


async def test_two_customers_in_one_step_are_invited_at_once_and_both_sign_one_after_a_wrong_code(
    settings: Settings, rules: Rules, control: ControlClient, rest: SalesforceRest,
    services_pki: tuple[DemoPki, PkiServices, str],
) -> None:
    opportunity = await record_id(control, "Opportunity", ACME)
    async with run_daemon(settings, rules) as daemon:
        mailbox = daemon.settings.data_dir / MAILBOX
        await control.update("Opportunity", opportunity, {"StageName": STAGE}, user=REP)

        async def invited() -> bool:  # both invitations are out before anyone has done anything
            return await asyncio.to_thread(_mails, Mailbox(mailbox), INVITATION) == {CLAIRE[0]: 1, THOMAS[0]: 1}

        await until(invited)
        async with Person(mailbox, *CLAIRE) as claire, Person(mailbox, *THOMAS) as thomas:
            assert claire.state == thomas.state == "code"
            right = await thomas.ask_code()
            wrong = f"{(int(right) + 1) % 10**6:06d}"
            assert await thomas.enter_code(wrong, status=400) == "code"
            assert "4 tries left" in thomas.page, "the page says how many tries are left"
            assert await thomas.enter_code(right) == "sign"
            assert await claire.enter_code(await claire.ask_code()) == "sign"
            pressed = await asyncio.gather(claire.press_sign(), thomas.press_sign())  # at the same moment
            assert set(pressed) <= {"signed", "completed"}, pressed

            await check_final(control, rest, services_pki[0], opportunity,
                              ("SellerSignature", "CustomerSignature", "CustomerSignature2"), 2)
            assert (await claire.reload(), await thomas.reload()) == ("completed", "completed")

        envelope = await _envelope(daemon)
        assert envelope is not None
        thomas_id = {r.email: r.id for r in await daemon.outbox.recipients(envelope.id)}[THOMAS[0]]
        contact = await _contact(control, THOMAS[0])
        [failed] = await until(lambda: _rows(control, opportunity, "code_failed"))
        assert (failed["Actor__c"], failed["Detail__c"]) == (
            contact, f"recipient {thomas_id} ({contact}), step 1 of 1: wrong code 1 of 5"), failed
        customers = sorted([contact, await _contact(control, CLAIRE[0])])

        async def both_signed() -> list[str]:  # the job's own `signed` row (the seller's seal, actor sfsign) aside
            actors = sorted(r["Actor__c"] for r in await _rows(control, opportunity, "signed"))
            return [a for a in actors if a != "sfsign"]

        assert await until(both_signed) == customers
        await until(lambda: _rows(control, opportunity, "completed"))
