"""Customer signing as the daemon runs it: the signing pages (the listener) and the mail loop (the postman),
over the daemon's outbox, with the link key of the data directory.

Why they run only when needed (`needed`): a seal-only installation should open no second port and need no
relay. They run when a rule has `signers:`, and also while the outbox still holds a live envelope or a
queued mail: removing the signers from the rules must not strand the envelopes already sent (their links
would die and their mails never go out). Either way they need the relay: `run` refuses to start without
SFSIGN_SMTP_URL (the start check `mail relay`).

How they stop: both are `Stop.NEW_WORK` parts of the daemon. The pages close their port before the worker
drains, so no signature arrives that the worker would have to apply in its last seconds; the mail loop
finishes the mail it is handing to the relay (else it would go out again, with the same Message-ID, on
the next start) and stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from sfsign.config import Rules, Settings
from sfsign.config.smtp import SmtpRelay
from sfsign.outbox.async_face import Outbox
from sfsign.private_files import private_dir
from sfsign.signing.lifecycle import Clock, SystemClock
from sfsign.signing.listener import SigningListener, start_listener
from sfsign.signing.mailer import Mailer
from sfsign.signing.postman import MailCounters, Postman, PostmanConfig
from sfsign.signing.tokens import LinkKeys

log = structlog.get_logger("sfsign.signing")


def signing_rules(rules: Rules) -> list[str]:
    """The names of the rules whose documents customers sign."""
    return [r.name for r in rules.rules if r.signers is not None]


async def needed(rules: Rules, outbox: Outbox) -> bool:
    """Whether the signing pages and the mail loop must run: a rule with signers, a live envelope (it has a
    due time: its expiry) or a queued mail."""
    if signing_rules(rules):
        return True
    return await outbox.next_envelope_due_at() is not None or await outbox.next_mail_at() is not None


class SigningService:
    """The listener and the postman of one daemon; `pages` and `mail` are its two parts' entry points."""

    def __init__(self, outbox: Outbox, settings: Settings, relay: SmtpRelay, rules: Callable[[], Rules],
                 keys: LinkKeys, *, counters: MailCounters | None = None, stop: asyncio.Event | None = None,
                 clock: Clock | None = None) -> None:
        self.keys = keys  # the daemon's, which the worker makes the links with
        self.outbox = outbox
        self.settings = settings
        self.artifacts_dir = settings.data_dir / "artifacts"
        self.listener: SigningListener | None = None
        self._stop = stop or asyncio.Event()
        self.clock = clock or SystemClock()  # the daemon's: codes, links and mails agree with the due times
        self.postman = Postman(
            outbox, Mailer(relay), self.keys,
            PostmanConfig(settings.signing_url, self.artifacts_dir, settings.signing_download_days),
            attach_completed=lambda name: _attach_completed(rules(), name), counters=counters, stop=self._stop,
            clock=self.clock,
        )
        outbox.mail_hooks.append(self.postman.wake)

    async def pages(self) -> None:
        """Serve the signing pages until the daemon stops (`close_pages` closes the port)."""
        self.listener = await start_listener(self.outbox, self.keys, self.settings, private_dir(self.artifacts_dir),
                                             clock=self.clock)
        if self.listener is None:
            log.warning("signing pages are off (SFSIGN_SIGNING_PORT=-1): signers' links do not answer here")
        await self._stop.wait()

    async def close_pages(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            await listener.stop()
            log.info("signing pages closed")

    async def mail(self) -> None:
        await self.postman.run()

    async def drain_mail(self) -> None:
        await self.postman.drain(min(self.settings.smtp_timeout_s, self.settings.shutdown_grace_s))

    @property
    def listening(self) -> bool:
        return self.listener is not None and self.listener.port is not None


def _attach_completed(rules: Rules, name: str) -> bool:
    """The rule's `attach_completed` (a rule renamed or removed since: attached, the default)."""
    rule = rules.by_name(name)
    return rule.signers.attach_completed if rule is not None and rule.signers is not None else True
