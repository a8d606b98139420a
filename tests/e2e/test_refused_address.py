"""A signer's address the relay refuses for good (issue 14 §3): the embedded relay answers 550 5.1.1 on RCPT as
a real one does, the real mailer and mail loop record it, and the record mirror puts the reason on the
record in the emulator and tells its owner once, through the custom-notification action. Time is the
mirror's fake clock (no sleeps)."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from test_envelope_record import ANNA, BERT, KEYS, VISIT, Org, org, until
from test_envelope_record import signing_rules as signing_rules

from sfsign.config import Rules, Settings
from sfsign.config.smtp import SmtpRelay, SmtpSecurity, parse_mail_from
from sfsign.emulator.control_client import ControlClient
from sfsign.localmail.mailbox import Mailbox
from sfsign.localmail.server import LocalMailServer, ServerSecurity
from sfsign.outbox.envelope_models import MailState
from sfsign.salesforce.rest import SalesforceRest
from sfsign.signing.lifecycle import DAY
from sfsign.signing.mailer import Mailer
from sfsign.signing.model import MailKind
from sfsign.signing.postman import Postman, PostmanConfig

SENDER = "Northwind Contracts <contracts@northwind.example>"


def _postman(o: Org, server: LocalMailServer, tmp_path: Path) -> Postman:
    relay = SmtpRelay(host="127.0.0.1", port=server.port, security=SmtpSecurity.INSECURE_LOOPBACK,
                      mail_from=parse_mail_from(SENDER), timeout_s=5.0)
    return Postman(o.outbox, Mailer(relay), KEYS, PostmanConfig("http://127.0.0.1:9", tmp_path / "artifacts"),
                   clock=o.clock)


async def test_a_refused_address_puts_the_reason_on_the_record_and_tells_the_owner_once(
    settings: Settings, control: ControlClient, rest: SalesforceRest, signing_rules: Rules, tmp_path: Path,
    logs: list[MutableMapping[str, Any]],
) -> None:
    # The first notification call meets an outage: it is sent again after its backoff, and arrives once.
    await control.post("/_control/faults/errors", {
        "prefix": f"/services/data/v{settings.api_version}/actions/standard/customNotificationAction",
        "method": "POST", "status": 503, "errorCode": "SERVER_UNAVAILABLE", "message": "Server Unavailable",
        "count": 1})
    with LocalMailServer(tmp_path / "mailbox", security=ServerSecurity.PLAIN) as server:
        server.rejected_recipients.add(ANNA.email)
        async with org(settings, control, rest, signing_rules, tmp_path) as o:
            envelope = await o.envelope("tx-bounce-1")
            await o.record(lambda r: r["Sign_Status__c"] == "Sent")
            postman = _postman(o, server, tmp_path)
            await postman.send_due()
            anna, bert = await o.recipient(envelope, "Anna"), await o.recipient(envelope, "Bert")
            by_recipient = {m.recipient_id: m for m in await o.outbox.envelope_mails(envelope.id)}
            assert (by_recipient[anna].state, by_recipient[bert].state) == (MailState.REJECTED, MailState.SENT)
            assert [m.recipients for m in Mailbox(server.directory).messages()] == [[BERT.email]]

            record = await o.record(lambda r: bool(r["Sign_Error__c"]))
            note = record["Sign_Error__c"]
            assert note.startswith(f"The mail relay refused the e-mail address of recipient {anna} "
                                   f"(contact {ANNA.salesforce_id}), step 1 of 1: 550 5.1.1 <recipient>: "
                                   "Recipient address rejected"), note
            assert "Void this request" in note and ANNA.email not in note
            assert record["Sign_Status__c"] == "Sent", "the envelope goes on for the other signer"

            o.clock.t += 3  # past the notification's first backoff (2 s)
            await until(lambda: _notifications(control, 1))
            [sent] = await control.notifications()
            owner = (await control.get("Opportunity", o.opportunity, ["OwnerId"]))["OwnerId"]
            assert (sent["title"], sent["deliveredTo"], sent["targetId"]) == (
                "Signature request not delivered: Proposal Acme Renewal 2027", [owner], o.opportunity)
            assert sent["body"].startswith(f"The mail relay refused the e-mail address of {ANNA.name} "
                                           f"(contact {ANNA.salesforce_id}, step 1 of 1), so they cannot sign.")
            assert ANNA.email not in sent["body"]
            [fault] = (await control.faults())["errors"]
            assert fault["hits"] == 1

            # Day 3: Anna's reminder bounces too, Bert opens his link: the note stays, nobody is told twice.
            o.clock.t += 3 * DAY
            await o.due_pass()
            await postman.send_due()
            reminders = [m for m in await o.outbox.envelope_mails(envelope.id) if m.kind is MailKind.REMINDER]
            assert {(m.recipient_id, m.state) for m in reminders} == {(anna, MailState.REJECTED),
                                                                      (bert, MailState.SENT)}
            await o.outbox.mark_recipient_viewed(bert, o.clock.now(), VISIT)
            viewed = await o.record(lambda r: r["Sign_Status__c"] == "Viewed")
            assert viewed["Sign_Error__c"] == note
            await o.mirror.pass_once()
            await o.mirror.pass_once()
            assert len(await control.notifications()) == 1
    assert ANNA.email not in repr(logs), "the address never reaches a log line"
    assert any(e.get("event") == "record owner notified of a refused address" and e.get("recipient") == anna
               for e in logs)


async def _notifications(control: ControlClient, count: int) -> bool:
    return len(await control.notifications()) >= count
