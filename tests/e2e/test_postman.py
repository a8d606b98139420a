"""The mail loop against the embedded SMTP server (sfsign.localmail) with the real aiosmtplib mailer, over a
real outbox file with an envelope made through the library and the signing listener on 127.0.0.1: what a
recipient finds in their mailbox, and that its link and code work on the listener. Time is the envelope's
`FakeClock`, moved to the due times the outbox persisted; the relay's failures are real (a closed port, a
550 for one address)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from secret_scan import register_secret
from signing_site import ABOUT, ANNA, CARA, KEYS, Site, browser, contract_pdf, csrf, signing_site

from sfsign.config.smtp import SmtpRelay, SmtpSecurity, parse_mail_from
from sfsign.localmail.mailbox import Mailbox, StoredMail
from sfsign.localmail.server import LocalMailServer, ServerSecurity
from sfsign.ops.metrics import Metrics
from sfsign.outbox.envelope_models import MailState, QueuedMail, SignerEvidence
from sfsign.signing.lifecycle import EventType
from sfsign.signing.mailer import Mailer
from sfsign.signing.model import AuthMethod, MailKind
from sfsign.signing.postman import Postman, PostmanConfig

SENDER = "Northwind Contracts <contracts@northwind.example>"
LTV = b"%PDF-1.7\n% the completed, long-term signed copy\n" + bytes(range(256)) * 8


@dataclass
class PostOffice:
    site: Site
    server: LocalMailServer
    postman: Postman
    metrics: Metrics

    @property
    def mailbox(self) -> Mailbox:
        return Mailbox(self.server.directory)

    async def arrived(self, predicate: Callable[[StoredMail], bool]) -> StoredMail:
        return await asyncio.to_thread(self.mailbox.wait_for, predicate, timeout_s=20.0)

    async def mails(self, kind: MailKind | None = None) -> list[QueuedMail]:
        mails = await self.site.outbox.envelope_mails(self.site.envelope.id)
        return [m for m in mails if kind is None or m.kind is kind]

    async def sent(self, kind: MailKind, within_s: float = 20.0) -> list[QueuedMail]:
        """The rows of `kind` once every one is SENT: the relay holds a message before the postman commits
        its row, so a test that read the row on arrival would race that commit."""
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            rows = await self.mails(kind)
            if rows and all(m.state is MailState.SENT for m in rows):
                return rows
            assert asyncio.get_running_loop().time() < deadline, f"{kind} rows not all sent: {rows}"
            await asyncio.sleep(0.05)


def to(address: str) -> Callable[[StoredMail], bool]:
    return lambda mail: mail.recipients == [address]


@contextlib.asynccontextmanager
async def post_office(tmp_path: Path, *, run: bool, attach: bool = True,
                      **site_options: Any) -> AsyncIterator[PostOffice]:
    """The listener over an envelope (signing_site), the embedded relay, and a postman for them; `run`: its
    loop runs (woken by the outbox), else the test drives `send_due` itself."""
    with LocalMailServer(tmp_path / "mailbox", security=ServerSecurity.PLAIN) as server:
        async with signing_site(tmp_path, contract_pdf(), **site_options) as site:
            relay = SmtpRelay(host="127.0.0.1", port=server.port, security=SmtpSecurity.INSECURE_LOOPBACK,
                              mail_from=parse_mail_from(SENDER), timeout_s=5.0)
            metrics = Metrics()
            postman = Postman(site.outbox, Mailer(relay), KEYS, PostmanConfig(site.url, site.artifacts),
                              attach_completed=lambda rule: attach, clock=site.clock, counters=metrics)
            for link in site.links.values():
                register_secret(link.removeprefix("/s/"))
            site.outbox.mail_hooks.append(postman.wake)
            task = asyncio.create_task(postman.run()) if run else None
            try:
                yield PostOffice(site, server, postman, metrics)
            finally:
                if task is not None:
                    await postman.drain(5.0)
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)


def _no_secrets_in(logs: list[MutableMapping[str, Any]], *secrets: str) -> None:
    text = repr(logs)
    for secret in (ANNA.email, CARA.email, ABOUT.rep_email, *secrets):
        assert secret not in text


async def test_invitation_link_and_code_reach_the_signer_and_work_on_the_listener(
        tmp_path: Path, logs: list[MutableMapping[str, Any]]) -> None:
    async with post_office(tmp_path, run=True) as office, browser() as client:
        site = office.site
        invitation = await office.arrived(to(ANNA.email))
        [row] = await office.sent(MailKind.INVITATION)
        assert invitation.message_id == row.message_id
        assert invitation.message["To"].addresses[0].addr_spec == ANNA.email
        assert invitation.message["Reply-To"].addresses[0].addr_spec == ABOUT.rep_email
        assert invitation.message["From"].addresses[0].addr_spec == "contracts@northwind.example"
        assert ABOUT.title in invitation.subject and ABOUT.sender in invitation.text
        [link] = [u for u in invitation.links if "/s/" in u]
        assert link == site.url + site.links["Anna"]
        async with client.get(link) as page:
            assert page.status == 200
            form = csrf(await page.text())
        async with client.post(f"{link}/code", data={"csrf": form}, allow_redirects=False) as asked:
            assert asked.status == 303
        code_mail = await office.arrived(lambda m: to(ANNA.email)(m) and m.message_id != row.message_id)
        code = code_mail.one_time_code
        assert code is not None and re.fullmatch(r"\d{6}", code)
        register_secret(code)
        [code_row] = await office.sent(MailKind.CODE)
        assert code_mail.message_id == code_row.message_id and code_row.sealed is None  # forgotten once sent
        async with client.post(f"{link}/verify", data={"csrf": form, "code": code}, allow_redirects=False) as ok:
            assert ok.status == 303
        async with client.get(link) as page:
            html = await page.text()
            assert 'name="consent"' in html  # the document and the signature form: the code was accepted
        async with client.post(f"{link}/sign", data={"csrf": csrf(html), "name": "Anna Buyer", "consent": "yes"},
                               allow_redirects=False) as signed:
            assert signed.status == 303
        # Her signature invites step 2 in the listener's transaction; the outbox wakes the loop.
        cara = await office.arrived(to(CARA.email))
        assert [u for u in cara.links if "/s/" in u] == [site.url + site.links["Cara"]]
        assert len(await office.sent(MailKind.INVITATION)) == 2  # counted as the relay answered, before this
        assert office.metrics.mails_sent.labels("invitation")._value.get() == 2
        assert office.metrics.mails_sent.labels("code")._value.get() == 1
    _no_secrets_in(logs, code, *(v.removeprefix("/s/") for v in site.links.values()))
    assert any(e.get("event") == "mail delivered to the relay" and e.get("recipient") for e in logs)


async def test_a_relay_that_is_down_keeps_the_mail_queued_until_its_retry_time(tmp_path: Path) -> None:
    async with post_office(tmp_path, run=False) as office:
        site, postman = office.site, office.postman
        office.server.set_down(True)
        held = await postman.send_due()
        [mail] = await office.mails(MailKind.INVITATION)
        assert mail.state is MailState.PENDING and mail.attempts == 1 and mail.last_error
        assert held == mail.next_attempt_at > site.clock.now()
        office.server.set_down(False)
        assert await postman.send_due() is None  # up again, but not due yet: nothing goes out early
        assert office.mailbox.messages() == []
        site.clock.t = mail.next_attempt_at
        await postman.send_due()
        [sent] = await office.mails(MailKind.INVITATION)
        assert sent.state is MailState.SENT and sent.attempts == 2
        [stored] = office.mailbox.messages()
        assert stored.message_id == mail.message_id
        assert office.metrics.mails_failed.labels("invitation", "retry")._value.get() == 1


async def test_a_mail_sent_again_after_a_crash_carries_the_same_message_id(tmp_path: Path) -> None:
    async with post_office(tmp_path, run=False) as office:
        postman = office.postman
        [mail] = await office.mails(MailKind.INVITATION)
        # What `deliver` does up to the relay's 250; the process dies before mark_mail_sent commits.
        request = await postman.compose(mail, office.site.clock.now())
        assert (await postman.mailer.send(request, log_id=str(mail.recipient_id))).status.value == "delivered"
        assert (await office.mails(MailKind.INVITATION))[0].state is MailState.PENDING
        await postman.send_due()  # the restarted loop finds it still queued
        first, again = office.mailbox.messages()
        assert first.message_id == again.message_id == mail.message_id
        assert (await office.mails(MailKind.INVITATION))[0].state is MailState.SENT


async def test_a_rejected_address_is_recorded_on_the_recipient_without_the_address(
        tmp_path: Path, logs: list[MutableMapping[str, Any]]) -> None:
    async with post_office(tmp_path, run=False) as office:
        site = office.site
        office.server.rejected_recipients.add(ANNA.email)
        assert await office.postman.send_due() is None  # a refusal for one address holds nothing up
        [mail] = await office.mails(MailKind.INVITATION)
        assert mail.state is MailState.REJECTED and mail.last_error is not None and "550" in mail.last_error
        anna = await site.recipient("Anna")
        assert anna.mail_error is not None and "550" in anna.mail_error and ANNA.email not in anna.mail_error
        events = await site.outbox.timeline(site.envelope.id)
        assert [e.recipient_id for e in events if e.type is EventType.MAIL_REJECTED] == [anna.id]
        assert office.mailbox.messages() == []
        assert office.metrics.mails_failed.labels("invitation", "rejected")._value.get() == 1
    _no_secrets_in(logs)


@pytest.mark.parametrize("attach", [True, False])
async def test_the_completed_mail_waits_for_the_final_document_then_carries_it(tmp_path: Path, attach: bool) -> None:
    async with post_office(tmp_path, run=False, attach=attach, signers=(ANNA,), auth=AuthMethod.NONE) as office, \
            browser() as client:
        site, postman = office.site, office.postman
        await postman.send_due()  # the invitation
        anna = await site.recipient("Anna")
        await site.outbox.mark_recipient_signed(anna.id, SignerEvidence("Anna Buyer", True), site.clock.now())
        await postman.send_due()
        [completed] = await office.mails(MailKind.COMPLETED)
        assert completed.state is MailState.PENDING and "completed document" in (completed.last_error or "")
        assert len(office.mailbox.to(ANNA.email)) == 1  # only the invitation: no completed mail without the file
        (site.artifacts / f"{site.envelope.transaction_id}.ltv.pdf").write_bytes(LTV)
        site.clock.t = completed.next_attempt_at
        await postman.send_due()
        mail = office.mailbox.to(ANNA.email)[-1]
        assert mail.message_id == completed.message_id and mail.subject.startswith("Completed")
        if attach:
            assert mail.attachments == [(f"{ABOUT.title}.pdf", LTV)]
            assert not [u for u in mail.links if "/s/" in u]
        else:
            assert mail.attachments == []
            [link] = [u for u in mail.links if "/s/" in u]
            async with client.get(f"{link}/document.pdf") as download:
                assert download.status == 200 and await download.read() == LTV
