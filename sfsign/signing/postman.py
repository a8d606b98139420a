"""The mail loop: takes each due mail off the outbox's queue, writes it for its recipient and hands it to the
relay, then records what the relay said.

Why a loop of its own: a mail is queued in the same transaction as the step that asks for it (an invitation
with the envelope, a code with the request for it), so nothing is lost when the relay is down; this loop
only delivers. It sleeps until the queue's next due time or until the outbox says a mail was queued
(`wake`, a hook in `Outbox.mail_hooks`), and at most `POLL_S`, so a mail queued by another process (`sfsign
envelopes resend`) goes out too.

What a relay answer does to the mail:
- delivered: `mark_mail_sent` (the sealed code leaves the row);
- down, 4xx, or our own settings refused: the mail stays queued with its retry time (persisted backoff,
  `mail_retry_at`), and this pass stops: the next mail would meet the same relay;
- refused for good (5xx for the address or the message): `rejected`, recorded on the recipient.
A mail that cannot be written at all (an address no mail can carry, a code sealed under another link key)
is rejected too: sending it again would fail the same way.

A completed mail waits for `<tx>.ltv.pdf`, the final document the job writes after the last signature: it
is attached (or, when the rule says `attach_completed: false`, the mail carries the signing link, whose
page offers the download). Log lines name the mail and the recipient by id: never an address, a code, a
link or its token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import structlog

from sfsign.aio import wait_any
from sfsign.outbox.async_face import Outbox
from sfsign.outbox.envelope_models import Envelope, MailState, QueuedMail
from sfsign.signing.lifecycle import Clock, SystemClock
from sfsign.signing.listener.documents import About, read_about
from sfsign.signing.mail_messages import LANGUAGES, Attachment, Language, MailRequest, Party
from sfsign.signing.mailer import Mailer, SendOutcome, SendStatus
from sfsign.signing.model import MailKind, RecipientState
from sfsign.signing.tokens import CODE_TTL_S, LinkKeys

log = structlog.get_logger("sfsign.signing.postman")

POLL_S = 30.0  # the longest sleep: mails queued by another process are found within this
COMPLETED_FILE = "ltv.pdf"  # the final document: the job writes it after the last signature
DAY = 86_400.0


class Unsendable(ValueError):
    """The mail cannot be written (its message names the mail's problem, never an address or a code)."""


class NotYet(Exception):
    """The mail waits for something the job has not written yet (the completed document)."""


@dataclass(frozen=True)
class PostmanConfig:
    """`signing_url`: the public base of the links (SFSIGN_SIGNING_URL); `download_days`: how long a
    completed document is offered (a completed mail older than that is no longer sent)."""

    signing_url: str
    artifacts_dir: Path
    download_days: float = 7.0


class MailCounters(Protocol):
    """Where the loop counts what it did (`sfsign.ops.metrics.Metrics`)."""

    def mail_sent(self, kind: str) -> None: ...

    def mail_failed(self, kind: str, outcome: str) -> None: ...


class _Uncounted:
    def mail_sent(self, kind: str) -> None:
        pass

    def mail_failed(self, kind: str, outcome: str) -> None:
        pass


class Postman:
    """Delivers the outbox's queued mails through `mailer` until the daemon stops."""

    def __init__(self, outbox: Outbox, mailer: Mailer, keys: LinkKeys, config: PostmanConfig, *,
                 attach_completed: Callable[[str], bool] = lambda rule: True, clock: Clock | None = None,
                 counters: MailCounters | None = None, stop: asyncio.Event | None = None) -> None:
        self.outbox, self.mailer, self.keys, self.config = outbox, mailer, keys, config
        self.attach_completed = attach_completed
        self.clock = clock or SystemClock()
        self.counters: MailCounters = counters or _Uncounted()
        self._stop = stop or asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._relay_down = False  # the last mail met a relay that is down or refuses our settings

    def wake(self) -> None:
        """A mail was queued: look at the queue now (called from the event loop's thread)."""
        self._wake.set()

    async def run(self) -> None:
        while not (self._stop.is_set() or self._stopping.is_set()):
            self._wake.clear()  # before the pass: a mail queued during it wakes the next one
            held_until = await self.send_due()
            next_at = await self.outbox.next_mail_at()
            if held_until is not None:
                next_at = held_until if next_at is None else max(next_at, held_until)
            wait = POLL_S if next_at is None else min(max(next_at - self.clock.now(), 0.0), POLL_S)
            if wait > 0:
                await wait_any(self._wake, self._stop, self._stopping, within_s=wait)

    async def drain(self, within_s: float) -> None:
        """Stop taking mails; let the one being handed to the relay finish (it would go out again otherwise)."""
        self._stopping.set()
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
        except TimeoutError:
            log.warning("mail.stopped_while_sending")

    async def send_due(self) -> float | None:
        """Send every mail due now, oldest first. When the relay cannot be reached (or refuses our settings),
        stop and return until when the queue is held: the other mails would meet the same relay."""
        while not (self._stop.is_set() or self._stopping.is_set()):
            mail = await self.outbox.next_mail(self.clock.now())
            if mail is None:
                return None
            self._idle.clear()
            try:
                after = await self.deliver(mail)
            finally:
                self._idle.set()
            if self._relay_down and after.state is MailState.PENDING:
                return after.next_attempt_at
        return None

    async def deliver(self, mail: QueuedMail) -> QueuedMail:
        """Write `mail`, hand it to the relay and record the answer; returns the mail row as it is now."""
        self._relay_down = False
        now = self.clock.now()
        try:
            request = await self.compose(mail, now)
        except NotYet as wait:
            log.info("mail.waiting", mail=mail.id, recipient=mail.recipient_id, kind=mail.kind.value,
                     waiting_for=str(wait))
            return await self.outbox.mark_mail_failed(mail.id, f"waiting: {wait}", now, permanent=False)
        except Unsendable as exc:
            log.warning("mail.unsendable", mail=mail.id, recipient=mail.recipient_id, kind=mail.kind.value,
                        reason=str(exc))
            self.counters.mail_failed(mail.kind.value, "unsendable")
            return await self.outbox.mark_mail_failed(mail.id, f"not sent: {exc}", now, permanent=True)
        outcome = await self.mailer.send(request, log_id=_log_id(mail))
        return await self._record(mail, request, outcome)

    async def _record(self, mail: QueuedMail, request: MailRequest, outcome: SendOutcome) -> QueuedMail:
        now = self.clock.now()
        if outcome.status is SendStatus.DELIVERED:
            self.counters.mail_sent(mail.kind.value)
            return await self.outbox.mark_mail_sent(mail.id, now)
        self.counters.mail_failed(mail.kind.value, outcome.status.value)
        error = self.mailer.scrub(outcome.reply, request.recipient) or outcome.status.value
        if outcome.fix:
            error = f"{error} (fix: {outcome.fix})"
        self._relay_down = outcome.send_again
        return await self.outbox.mark_mail_failed(mail.id, error, now, permanent=not outcome.send_again)

    # -------------------------------------------------------------------------------------- writing

    async def compose(self, mail: QueuedMail, now: float) -> MailRequest:
        """The `MailRequest` for a queued mail: its recipient, envelope, the job's about.json, the link, the
        code (unsealed) or the completed document."""
        envelope = await self.outbox.envelope(mail.transaction_id)
        if envelope is None:
            raise Unsendable("its envelope is gone")
        about = await asyncio.to_thread(read_about, self.config.artifacts_dir, envelope.transaction_id)
        owner = self._owner(about)
        if mail.recipient_id is not None:
            if not mail.recipient_email:
                raise Unsendable("its recipient has no e-mail address")
            recipient = Party(_one_line(mail.recipient_name or ""), mail.recipient_email.strip())
        else:  # a mail to the sender: the rep replies reach
            recipient = owner
        values: dict[str, object] = {}
        kind = mail.kind
        if kind in (MailKind.INVITATION, MailKind.REMINDER):
            values.update(link_url=self.link(mail), expires_on=_day(envelope.expires_at))
        elif kind is MailKind.CODE:
            values.update(code=self._code(mail), code_valid_minutes=self._code_minutes(mail, now))
        elif kind is MailKind.EXPIRED:
            values.update(expires_on=_day(envelope.expires_at))
        elif kind is MailKind.VOIDED:
            values.update(reason=envelope.reason)
        elif kind is MailKind.REFUSED:
            values.update(await self._refusal(envelope))
        elif kind is MailKind.COMPLETED:
            values.update(await self._completed(mail, envelope, about, now))
        language = mail.language if mail.language in LANGUAGES else "en"
        try:
            return MailRequest(
                kind=kind, language=cast(Language, language), recipient=recipient,
                sender_org=_one_line(about.sender) or self.mailer.relay.mail_from.display_name,
                owner=owner, document_title=_one_line(about.title) or envelope.transaction_id,
                message_id=mail.message_id, **values,  # type: ignore[arg-type]
            )
        except ValueError as exc:
            raise Unsendable(str(exc)) from None

    def link(self, mail: QueuedMail) -> str:
        """The recipient's signing link: the same for every mail of one link generation."""
        assert mail.recipient_id is not None
        token = self.keys.link_token(mail.transaction_id, mail.recipient_id, mail.token_generation)
        return f"{self.config.signing_url}/s/{token}"

    def _owner(self, about: About) -> Party:
        """Who replies reach: the record's owner, else the From address (a reply always reaches someone)."""
        if about.rep_email.strip():
            return Party(_one_line(about.rep_name), about.rep_email.strip())
        sender = self.mailer.relay.mail_from
        return Party(sender.display_name, sender.address)

    def _code(self, mail: QueuedMail) -> str:
        if mail.sealed is None:
            raise Unsendable("the code mail carries no code")
        try:
            return self.keys.unseal(mail.sealed, mail.message_id)
        except Exception:  # InvalidTag: sealed under another link key; never say more
            raise Unsendable("its code was sealed under another link key (SFSIGN_LINK_KEY changed)") from None

    def _code_minutes(self, mail: QueuedMail, now: float) -> int:
        left = mail.created_at + CODE_TTL_S - now
        if left <= 0:
            raise Unsendable(f"its code expired ({CODE_TTL_S / 60:g} minutes) before the relay took it; the signer "
                             "asks for a new one on the signing page")
        return max(1, math.floor(left / 60))

    async def _refusal(self, envelope: Envelope) -> dict[str, object]:
        refused = [r for r in await self.outbox.recipients(envelope.id) if r.state is RecipientState.REFUSED]
        who = refused[0] if refused else None
        return {"reason": (who.reason if who else None) or envelope.reason or "-",
                "declined_by": _one_line(who.name) if who else None}

    async def _completed(self, mail: QueuedMail, envelope: Envelope, about: About, now: float) -> dict[str, object]:
        path = self.config.artifacts_dir / f"{envelope.transaction_id}.{COMPLETED_FILE}"
        if not await asyncio.to_thread(path.is_file):
            if now > mail.created_at + self.config.download_days * DAY:
                raise Unsendable("the completed document is no longer kept")
            raise NotYet("the completed document")
        if not self.attach_completed(envelope.rule):
            if mail.recipient_id is None:
                return {}
            return {"link_url": self.link(mail)}
        content = await asyncio.to_thread(path.read_bytes)
        return {"attachment": Attachment(_file_name(about, envelope), content)}


def _log_id(mail: QueuedMail) -> str:
    return f"{mail.recipient_id}" if mail.recipient_id is not None else f"sender of mail {mail.id}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _day(at: float) -> dt.date:
    return dt.datetime.fromtimestamp(at, dt.UTC).date()


def _file_name(about: About, envelope: Envelope) -> str:
    """The attachment's name: the document's title, as a file name any mail client keeps."""
    title = "".join(ch if ch.isalnum() or ch in " -_.()" else "-" for ch in _one_line(about.title))[:100].strip()
    return f"{title or envelope.transaction_id}.pdf"
