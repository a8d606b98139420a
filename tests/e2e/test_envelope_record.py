"""An envelope on its record (issue 14 part B), against the emulator over HTTPS with a real outbox file: the
record mirror and the reminder/expiry scheduler run as the daemon runs them, on a fake clock the tests move
by days. Envelopes are made through the outbox library on a job committed as intake commits one, so each
state can be set up directly; the same scenarios through the running daemon, with people on the signing
pages, are in test_customer_scenarios.py (and a signer rule's job steps in test_customer_signing_jobs.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_support import record_id

from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import Rules, Settings, load_rules
from sfsign.emulator.control_client import ControlClient
from sfsign.envelope_due import EnvelopeDue
from sfsign.envelope_mirror import EnvelopeMirror
from sfsign.governor import ApiGovernor
from sfsign.localpki.pki import DemoPki
from sfsign.outbox import NewJob, Outbox, StepAudit
from sfsign.outbox.envelope_models import Envelope, MailState, SignerEvidence, Visit
from sfsign.salesforce.names import ENVELOPE_EVENT_TYPES
from sfsign.salesforce.rest import SalesforceRest
from sfsign.signing.lifecycle import DAY, EnvelopePolicy
from sfsign.signing.model import MailKind, ResolvedSigner, SignerSource
from sfsign.signing.tokens import LinkKeys

ACME = "Acme Industries - Platform Renewal 2027"
RULE = "opportunity-proposal"
KEYS = LinkKeys(b"r" * 32)
VISIT = Visit(ip="203.0.113.7", user_agent="Mozilla/5.0 (test)")
ANNA = ResolvedSigner(1, "Anna Buyer", "anna@acme-industries.example", SignerSource.CONTACT_ROLE,
                      "003000000000001AAA", "Economic Buyer")
BERT = ResolvedSigner(1, "Bert Legal", "bert@acme-industries.example", SignerSource.CONTACT_ROLE,
                      "003000000000002AAA", "Legal")
SIGNERS = """\
    signers:
      steps:
        - [{contact_role: primary}]
      on_expiry: {stage: "Closed Lost"}
"""
FIELDS = ["Sign_Status__c", "Sign_Progress__c", "Sign_Sent_At__c", "Sign_Expires_At__c", "Sign_Decline_Reason__c",
          "Sign_Transaction_Id__c", "Sign_Error__c", "StageName"]


class FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t


@dataclass
class Org:
    outbox: Outbox
    control: ControlClient
    clock: FakeClock
    mirror: EnvelopeMirror
    due: EnvelopeDue
    opportunity: str

    async def envelope(self, tx: str, signers: tuple[ResolvedSigner, ...] = (ANNA, BERT)) -> Envelope:
        """A job committed as intake commits one, then its envelope (as the worker's send step makes it)."""
        [job] = (await self.outbox.commit_event(None, None, [
            NewJob(tx, RULE, "Opportunity", self.opportunity, "event")])).created
        job = await self.outbox.mark_fetched(job, document_json="{}", file_title="Proposal Acme Renewal 2027",
                                             file_name="Proposal.pdf")
        return await self.outbox.create_envelope(job, signers, EnvelopePolicy(), self.clock.now(), KEYS,
                                                 document_sha256="ab" * 32)

    async def record(self, until: Callable[[dict[str, Any]], bool], within_s: float = 20.0) -> dict[str, Any]:
        async with asyncio.timeout(within_s):
            while True:
                row = await self.control.get("Opportunity", self.opportunity, FIELDS)
                if until(row):
                    return row
                await asyncio.sleep(0.05)

    async def events(self) -> list[dict[str, Any]]:
        """The record's envelope events (the job's own `queued` and `fetched` rows left out)."""
        rows = await self.control.query(
            "SELECT Event_Type__c, Detail__c, Actor__c, Transaction_Id__c FROM Signature_Event__c "
            f"WHERE Opportunity__c = '{self.opportunity}' ORDER BY Occurred_At__c")
        return [r for r in rows if r["Event_Type__c"] in ENVELOPE_EVENT_TYPES]

    async def recipient(self, envelope: Envelope, first_name: str) -> int:
        return {r.name.split()[0]: r.id for r in await self.outbox.recipients(envelope.id)}[first_name]

    async def authenticate(self, envelope: Envelope, first_name: str) -> int:
        """The recipient asks for a code and types it, as on the signing page; their id."""
        rid = await self.recipient(envelope, first_name)
        code = await self.outbox.issue_code(rid, self.clock.now(), KEYS)
        [mail] = [m for m in await self.outbox.envelope_mails(envelope.id) if m.id == code.mail_id]
        assert mail.sealed is not None
        await self.outbox.check_code(rid, KEYS.unseal(mail.sealed, mail.message_id), self.clock.now(), KEYS)
        return rid

    async def sign(self, envelope: Envelope, first_name: str) -> None:
        rid = await self.authenticate(envelope, first_name)
        await self.outbox.mark_recipient_signed(rid, SignerEvidence(first_name, True, VISIT), self.clock.now())

    async def due_pass(self) -> None:
        """Wake the scheduler and wait until it completed a pass at the clock's time."""
        passes = self.due.passes
        self.due.wake()
        await until(lambda: self.due.passes > passes)


async def until(check: Callable[[], bool | Awaitable[bool]], within_s: float = 20.0) -> None:
    async with asyncio.timeout(within_s):
        while True:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.02)


@pytest.fixture
def signing_rules(tmp_path: Path, pki: DemoPki, monkeypatch: pytest.MonkeyPatch, pki_passphrase: str) -> Rules:
    monkeypatch.setenv(PASSPHRASE_ENV, pki_passphrase)
    text = RULES_TEMPLATE.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV)
    anchor = 'file_name: "Proposal {number} {date}.pdf"\n'
    path = tmp_path / "rules-signers.yaml"
    path.write_text(text.replace(anchor, anchor + SIGNERS))
    return load_rules(path)


@asynccontextmanager
async def org(settings: Settings, control: ControlClient, rest: SalesforceRest, rules: Rules,
              tmp_path: Path) -> AsyncIterator[Org]:
    """The mirror and the scheduler over a real outbox, as the daemon runs them (the integration user with the
    package's permission set)."""
    await control.post("/_control/users/access", {"user": settings.username, "permissionSets": ["sfsign_Integration"]})
    outbox = Outbox(tmp_path / "outbox.sqlite")
    await outbox.open()
    stop, clock = asyncio.Event(), FakeClock()
    mirror = EnvelopeMirror(outbox, rest, rules=lambda: rules, notification_type=settings.notification_type,
                            governor=ApiGovernor(lambda: rest.api_usage), audit_lock=asyncio.Lock(), stop=stop,
                            clock=clock, poll_s=0.05)
    due = EnvelopeDue(outbox, stop=stop, clock=clock, on_change=mirror.wake)
    tasks = [asyncio.create_task(mirror.run()), asyncio.create_task(due.run())]
    try:
        yield Org(outbox, control, clock, mirror, due, await record_id(control, "Opportunity", ACME))
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await outbox.close()


async def test_the_record_follows_the_envelope_sent_viewed_one_of_two_signed_and_declined(
    settings: Settings, control: ControlClient, rest: SalesforceRest, signing_rules: Rules, tmp_path: Path
) -> None:
    async with org(settings, control, rest, signing_rules, tmp_path) as o:
        envelope = await o.envelope("tx-record-1")
        sent = await o.record(lambda r: r["Sign_Status__c"] == "Sent")
        assert (sent["Sign_Progress__c"], sent["Sign_Transaction_Id__c"]) == ("0 of 2 signed", "tx-record-1")
        assert sent["Sign_Sent_At__c"][:16] == time.strftime("%Y-%m-%dT%H:%M", time.gmtime(o.clock.t))
        assert sent["Sign_Expires_At__c"][:16] == time.strftime("%Y-%m-%dT%H:%M", time.gmtime(o.clock.t + 30 * DAY))
        assert [(e["Event_Type__c"], e["Transaction_Id__c"]) for e in await o.events()] == [("sent", "tx-record-1")]

        await o.outbox.mark_recipient_viewed(await o.recipient(envelope, "Anna"), o.clock.now(), VISIT)
        await o.record(lambda r: r["Sign_Status__c"] == "Viewed")
        await o.sign(envelope, "Anna")
        signed = await o.record(lambda r: r["Sign_Progress__c"] == "1 of 2 signed")
        assert signed["Sign_Status__c"] == "Viewed"

        bert = await o.authenticate(envelope, "Bert")
        await o.outbox.mark_recipient_refused(bert, "Budget frozen until Q3", o.clock.now(), VISIT)
        refused = await o.record(lambda r: r["Sign_Status__c"] == "Refused")
        assert (refused["Sign_Decline_Reason__c"], refused["Sign_Progress__c"]) == (
            "Budget frozen until Q3", "1 of 2 signed")
        events = await o.events()
        assert [e["Event_Type__c"] for e in events] == ["sent", "viewed", "signed", "declined"]
        declined = events[-1]
        assert declined["Detail__c"] == f"recipient {bert} (003000000000002AAA), step 1 of 1: Budget frozen until Q3"
        assert declined["Actor__c"] == "003000000000002AAA"
        assert not any("@" in str(e["Detail__c"]) for e in events), "recipients by id, never by address"

        await until(lambda: _count_notifications(control, 1))
        await o.mirror.pass_once()
        [note] = await control.notifications()
        owner = (await control.get("Opportunity", o.opportunity, ["OwnerId"]))["OwnerId"]
        assert (note["title"], note["deliveredTo"], note["targetId"]) == (
            "Signature declined: Proposal Acme Renewal 2027", [owner], o.opportunity)
        assert note["body"] == "Bert Legal declined to sign. Reason: Budget frozen until Q3"
        assert (await o.outbox.envelope("tx-record-1")).notified_at is not None  # type: ignore[union-attr]


async def _count_notifications(control: ControlClient, count: int) -> bool:
    return len(await control.notifications()) >= count


async def test_reminders_on_day_three_and_five_then_expiry_moves_the_stage_and_notifies_once(
    settings: Settings, control: ControlClient, rest: SalesforceRest, signing_rules: Rules, tmp_path: Path
) -> None:
    async with org(settings, control, rest, signing_rules, tmp_path) as o:
        envelope = await o.envelope("tx-record-2", (ANNA,))
        await o.record(lambda r: r["Sign_Status__c"] == "Sent")
        start = o.clock.t

        async def reminders() -> int:
            return len([m for m in await o.outbox.envelope_mails(envelope.id)
                        if m.kind is MailKind.REMINDER and m.state is MailState.PENDING])

        for day, expected in ((2.9, 0), (3, 1), (3, 1), (4, 1), (5, 2), (5, 2), (7, 2), (29, 2)):
            o.clock.t = start + day * DAY + 1
            await o.due_pass()
            assert await reminders() == expected, f"day {day}"

        o.clock.t = start + 30 * DAY + 1
        await o.due_pass()
        await o.due_pass()  # a second pass finds nothing due
        expired = await o.record(lambda r: r["Sign_Status__c"] == "Expired")
        assert (expired["StageName"], expired["Sign_Progress__c"]) == ("Closed Lost", "0 of 1 signed")
        await until(lambda: _count_notifications(control, 1))
        await o.due_pass()
        await o.mirror.pass_once()
        [note] = await control.notifications()
        assert note["title"] == "Signature request expired: Proposal Acme Renewal 2027"
        assert note["body"] == "The invitation to sign expired with 0 of 1 signed. The StageName is now Closed Lost."
        assert [e["Event_Type__c"] for e in await o.events()] == ["sent", "reminded", "reminded", "expired"]
        assert await reminders() == 0, "an expired envelope's unsent reminders are cancelled"


async def test_completed_leaves_the_status_to_the_job_and_notifies_once_the_job_is_done(
    settings: Settings, control: ControlClient, rest: SalesforceRest, signing_rules: Rules, tmp_path: Path
) -> None:
    async with org(settings, control, rest, signing_rules, tmp_path) as o:
        envelope = await o.envelope("tx-record-3", (ANNA,))
        await o.record(lambda r: r["Sign_Status__c"] == "Sent")
        await o.sign(envelope, "Anna")
        record = await o.record(lambda r: r["Sign_Progress__c"] == "1 of 1 signed")
        assert record["Sign_Status__c"] == "Sent", "never Completed: the job's write-back shows it with the files"
        await o.mirror.pass_once()
        assert await control.notifications() == [], "not before the job is done"
        job = await o.outbox.by_transaction("tx-record-3")
        assert job is not None
        await o.outbox.mark_done(job, StepAudit("Completed"))
        await until(lambda: _count_notifications(control, 1))
        await o.mirror.pass_once()
        [note] = await control.notifications()
        assert note["title"] == "Signed by every signer: Proposal Acme Renewal 2027"
        assert [e["Event_Type__c"] for e in await o.events()][-2:] == ["signed", "completed"]


async def test_a_record_write_that_fails_is_retried_after_its_backoff_and_lands_once(
    settings: Settings, control: ControlClient, rest: SalesforceRest, signing_rules: Rules, tmp_path: Path
) -> None:
    await control.post("/_control/faults/errors", {
        "prefix": f"/services/data/v{settings.api_version}/composite", "method": "POST", "status": 503,
        "errorCode": "SERVER_UNAVAILABLE", "message": "Server Unavailable", "count": 1})
    async with org(settings, control, rest, signing_rules, tmp_path) as o:
        await o.envelope("tx-record-4")

        async def failed_once() -> bool:
            envelope = await o.outbox.envelope("tx-record-4")
            return envelope is not None and envelope.mirror_attempts == 1

        await until(failed_once)
        await o.mirror.pass_once()  # within the backoff: nothing is sent
        assert (await control.get("Opportunity", o.opportunity, FIELDS))["Sign_Status__c"] is None
        [fault] = (await control.faults())["errors"]
        assert fault["hits"] == 1
        o.clock.t += 3  # past the first backoff (2 s)
        o.mirror.wake()
        await o.record(lambda r: r["Sign_Status__c"] == "Sent")
        await o.mirror.pass_once()
        envelope = await o.outbox.envelope("tx-record-4")
        assert envelope is not None and (envelope.synced_version, envelope.mirror_attempts) == (envelope.version, 0)
        assert [e["Event_Type__c"] for e in await o.events()] == ["sent"], "the audit row went once, with the write"


async def test_an_expiry_whose_stage_move_salesforce_refuses_is_written_expired_with_a_note(
    settings: Settings, control: ControlClient, rest: SalesforceRest, signing_rules: Rules, tmp_path: Path
) -> None:
    # As a validation rule on the stage would: every write that moves the stage to Closed Lost is refused.
    await control.post("/_control/faults/errors", {
        "prefix": f"/services/data/v{settings.api_version}/composite", "method": "POST", "status": 400,
        "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": "Enter a Loss Reason to close as lost",
        "bodyContains": '"StageName": "Closed Lost"'})
    async with org(settings, control, rest, signing_rules, tmp_path) as o:
        await o.envelope("tx-record-5", (ANNA,))
        before = (await o.record(lambda r: r["Sign_Status__c"] == "Sent"))["StageName"]
        o.clock.t += 30 * DAY + 1
        await o.due_pass()
        expired = await o.record(lambda r: r["Sign_Status__c"] == "Expired")
        assert expired["StageName"] == before != "Closed Lost"
        assert expired["Sign_Error__c"] == (
            "The signature request expired; the StageName could not be moved to 'Closed Lost' "
            "(FIELD_CUSTOM_VALIDATION_EXCEPTION: Enter a Loss Reason to close as lost)")
        envelope = await o.outbox.envelope("tx-record-5")
        assert envelope is not None and envelope.synced_version == envelope.version
        await until(lambda: _count_notifications(control, 1))
        [note] = await control.notifications()  # it says where the record is, not where it was meant to go
        assert note["body"] == ("The invitation to sign expired with 0 of 1 signed. The StageName could not be "
                                "moved to Closed Lost: the record's Sign_Error__c says why.")
