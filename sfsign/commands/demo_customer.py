"""The demo's customer: a person who signs from their mailbox, played over HTTP.

`sfsign demo` sends one document out for a customer signature. Nothing here reaches into the daemon: like a
person, the customer reads the invitation the embedded SMTP server stored, follows its link to the signing
page, asks for a code, reads it from the next mail, types it, types their name, ticks the consent and signs,
each step a form posted with the page's CSRF token and the session cookie the page set. So the demo proves
what a real signer would go through, and a broken page or mail fails it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from sfsign.emulator.control_client import ControlClient
from sfsign.localmail.mailbox import Mailbox, StoredMail
from sfsign.outbox import Outbox
from sfsign.outbox.envelope_models import MailState
from sfsign.signing.model import MailKind

_STATE = re.compile(r'data-state="([a-z_-]+)"')
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_SIGNING_PATH = re.compile(r"/s/[A-Za-z0-9_\-.~]+$")


class CustomerError(RuntimeError):
    """The customer could not go on (no mail, an unexpected page): the message says where it stopped."""


@dataclass(frozen=True)
class Signed:
    """What the customer saw: the link they followed and the page state they ended on."""

    link: str
    final_state: str
    steps: tuple[str, ...]


class DemoCustomer:
    """One signer at `address`, reading `mailbox`, signing as `name`."""

    def __init__(self, mailbox: Path, address: str, name: str, *, timeout_s: float = 60.0,
                 verify: bool | str = True) -> None:
        self.mailbox = Mailbox(mailbox)
        self.address = address
        self.name = name
        self.timeout_s = timeout_s
        self.verify = verify

    async def invitation_link(self) -> str:
        """The signing link of the newest invitation (waiting for it to arrive)."""
        invitation = await self._wait_for_mail(lambda m: self._link_of(m) is not None, skip=0)
        link = self._link_of(invitation)
        assert link is not None
        return link

    async def sign(self) -> Signed:
        """Sign the document the newest invitation asks for; returns the state the page ends on."""
        link = await self.invitation_link()
        steps: list[str] = []
        async with httpx.AsyncClient(verify=self.verify, follow_redirects=True, timeout=30.0) as client:
            page = await self._get(client, link)
            state = self._state(page)
            steps.append(state)
            if state == "code":
                before = len(await asyncio.to_thread(self.mailbox.to, self.address))
                page = await self._post(client, f"{link}/code", page, {})
                steps.append(self._state(page))
                code_mail = await self._wait_for_mail(lambda m: m.one_time_code is not None, skip=before)
                page = await self._post(client, f"{link}/verify", page, {"code": str(code_mail.one_time_code)})
                state = self._state(page)
                steps.append(state)
            if state != "sign":
                raise CustomerError(f"the signing page shows {state!r} where the document and the Sign form "
                                    "were expected")
            page = await self._post(client, f"{link}/sign", page, {"name": self.name, "consent": "yes"})
            state = self._state(page)
            steps.append(state)
        return Signed(link, state, tuple(steps))

    def _link_of(self, mail: StoredMail) -> str | None:
        for url in mail.links:
            if _SIGNING_PATH.search(url):
                return url
        return None

    async def _wait_for_mail(self, wanted: Callable[[StoredMail], bool], *, skip: int) -> StoredMail:
        """The newest mail to the customer that `wanted` accepts among those after the first `skip` (the
        server's file names sort by arrival), polling without blocking the loop."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            mails = await asyncio.to_thread(self.mailbox.to, self.address)
            for mail in reversed(mails[skip:]):
                if wanted(mail):
                    return mail
            if time.monotonic() > deadline:
                raise CustomerError(f"no such mail to the customer in {self.mailbox.directory} after "
                                    f"{self.timeout_s:.0f} s")
            await asyncio.sleep(0.1)

    async def _get(self, client: httpx.AsyncClient, url: str) -> str:
        response = await client.get(url)
        if response.status_code != 200:
            raise CustomerError(f"GET of the signing link answered {response.status_code}")
        return response.text

    async def _post(self, client: httpx.AsyncClient, url: str, page: str, form: dict[str, str]) -> str:
        token = _CSRF.search(page)
        if token is None:
            raise CustomerError(f"the page before {url.rsplit('/', 1)[-1]!r} has no form")
        response = await client.post(url, data={"csrf": html.unescape(token.group(1)), **form})
        if response.status_code != 200:
            raise CustomerError(f"posting {url.rsplit('/', 1)[-1]!r} answered {response.status_code}")
        return response.text

    @staticmethod
    def _state(page: str) -> str:
        found = _STATE.search(page)
        return found.group(1) if found else "unknown"


async def quote_contact(control: ControlClient, quote_id: str) -> tuple[str, str]:
    """(e-mail, name) of the quote's contact: who the demo's customer rule invites."""
    rows = await control.query(f"SELECT Contact.Email, Contact.Name FROM Quote WHERE Id = '{quote_id}'")
    contact = rows[0].get("Contact") if rows else None
    if not contact or not contact.get("Email"):
        raise CustomerError(f"the demo quote {quote_id} has no contact with an e-mail address")
    return str(contact["Email"]), str(contact.get("Name") or "")


async def timeline(outbox: Outbox, transaction_id: str) -> list[str]:
    """The envelope's timeline as the operator command prints it: time (UTC), event, recipient, detail."""
    envelope = await outbox.envelope(transaction_id)
    if envelope is None:
        return []
    lines = []
    for event in await outbox.timeline(envelope.id):
        at = dt.datetime.fromtimestamp(event.at, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
        who = f"recipient {event.recipient_id}" if event.recipient_id is not None else ""
        lines.append(f"{at}  {event.type.value:<14} {who:<13} {event.detail or ''}".rstrip())
    return lines


async def completed_copy_sent(outbox: Outbox, transaction_id: str, within_s: float = 30.0) -> bool:
    """Wait until the relay took the completed copy (it follows the record's `Completed`: it carries the final
    document), so the mailbox the demo leaves behind holds the whole exchange."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        envelope = await outbox.envelope(transaction_id)
        if envelope is None:
            return False
        mails = [m for m in await outbox.envelope_mails(envelope.id) if m.kind is MailKind.COMPLETED]
        if mails and all(m.state is not MailState.PENDING for m in mails):
            return True
        await asyncio.sleep(0.1)
    return False
