"""Test setup for the signing pages: a real outbox file with an envelope made through the library, the
document and its `about.json` in an artifacts directory, and the listener on 127.0.0.1 (port 0) with a
clock the test moves. Helpers read what the mailer would: the code from the queued code mail."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import aiohttp

from sfsign.documents.model import sample_contract
from sfsign.documents.render import render_pdf
from sfsign.outbox import NewJob
from sfsign.outbox.async_face import Outbox
from sfsign.outbox.envelope_models import Envelope, MailState, Recipient
from sfsign.signing.lifecycle import EnvelopePolicy
from sfsign.signing.listener import About, Documents, Flows, Limits, SigningListener, write_about
from sfsign.signing.model import AuthMethod, MailKind, ResolvedSigner, SignerSource
from sfsign.signing.tokens import LinkKeys

T0 = 1_800_000_000.0
KEYS = LinkKeys(b"s" * 32)
ABOUT = About(sender="Nordlicht Software GmbH", title="Quote Q-00042", rep_name="Rita Rep",
              rep_email="rita.rep@nordlicht.example")
ANNA = ResolvedSigner(1, "Anna Buyer", "anna@example.com", SignerSource.CONTACT_ROLE, "003000000000001AAA", "Buyer")
CARA = ResolvedSigner(2, "Cara Seller", "cara@example.com", SignerSource.USER, "005000000000001AAA")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@lru_cache(maxsize=1)
def contract_pdf() -> bytes:
    """A real two-page quote from the built-in template (rendered once per test process, ~0.5 s)."""
    return render_pdf(sample_contract(line_count=20), "quote").pdf


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


@dataclass
class Site:
    """One listener over one outbox, and the envelope it serves."""

    outbox: Outbox
    listener: SigningListener
    clock: FakeClock
    envelope: Envelope
    artifacts: Path
    links: dict[str, str] = field(default_factory=dict)  # first name → /s/<token>

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.port}"

    async def recipient(self, first_name: str) -> Recipient:
        return {r.name.split()[0]: r for r in await self.outbox.recipients(self.envelope.id)}[first_name]

    async def current(self) -> Envelope:
        envelope = await self.outbox.envelope(self.envelope.transaction_id)
        assert envelope is not None
        return envelope

    async def code(self, first_name: str) -> str:
        """The code in the recipient's pending code mail, unsealed as the mailer will."""
        recipient = await self.recipient(first_name)
        [mail] = [m for m in await self.outbox.envelope_mails(self.envelope.id)
                  if m.kind is MailKind.CODE and m.recipient_id == recipient.id and m.state is MailState.PENDING]
        assert mail.sealed is not None
        return KEYS.unseal(mail.sealed, mail.message_id)


@asynccontextmanager
async def signing_site(tmp: Path, pdf: bytes, *, signers: tuple[ResolvedSigner, ...] = (ANNA, CARA),
                       auth: AuthMethod = AuthMethod.EMAIL_OTP, language: str = "en", limits: Limits | None = None,
                       tx: str = "tx-sign-1", proxy_hops: int = 0) -> AsyncIterator[Site]:
    outbox = Outbox(tmp / "outbox.sqlite")
    await outbox.open()
    clock = FakeClock()
    artifacts = tmp / "artifacts"
    artifacts.mkdir(exist_ok=True)
    try:
        job = (await outbox.call(lambda s: s.commit_event(
            None, None, [NewJob(tx, "quote", "Quote", "0Q0000000000001AAA", "cdc")]))).created[0]
        envelope = await outbox.create_envelope(job, signers, EnvelopePolicy(auth=auth, language=language), T0, KEYS,
                                                document_sha256="cd" * 32)
        (artifacts / f"{tx}.signed.pdf").write_bytes(pdf)
        write_about(artifacts, tx, ABOUT)
        flows = Flows(outbox, KEYS, Documents(artifacts), clock, secure=False, limits=limits, proxy_hops=proxy_hops)
        listener = SigningListener(flows, "127.0.0.1", 0, secure=False)
        await listener.start()
        site = Site(outbox, listener, clock, envelope, artifacts)
        for r in await outbox.recipients(envelope.id):
            site.links[r.name.split()[0]] = f"/s/{KEYS.link_token(tx, r.id, r.token_generation)}"
        try:
            yield site
        finally:
            await listener.stop()
    finally:
        await outbox.close()


def browser() -> aiohttp.ClientSession:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's default jar ignores IP hosts) and never follows
    redirects by itself, so a test sees each answer."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def csrf(html: str) -> str:
    match = CSRF.search(html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)
