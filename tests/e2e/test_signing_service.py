"""The signing pages and the mail loop in the daemon (issue 14 wiring, part C): `sfsign run` with a rule that
has signers serves the pages on their own port and closes it on SIGTERM, refuses to start without a relay,
and a mail the outbox queues goes out through the relay, its link opening on the daemon's own pages."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from daemon_process import WAIT_S, kill, run_env, start_run, subscribed
from e2e_support import REP, record_id, run_cli, run_daemon

from sfsign.commands.demo import MAILBOX, free_port
from sfsign.commands.demo_rules import PASSPHRASE_ENV, RULES_TEMPLATE
from sfsign.config import Settings, load_rules
from sfsign.emulator.control_client import ControlClient
from sfsign.localmail.mailbox import Mailbox
from sfsign.localmail.server import LocalMailServer, ServerSecurity
from sfsign.localpki.pki import DemoPki
from sfsign.outbox import NewJob, OutboxStore
from sfsign.signing.lifecycle import EnvelopePolicy
from sfsign.signing.model import MailKind, ResolvedSigner, SignerSource
from sfsign.signing.tokens import LinkKeys

QUOTE_SIGNERS = """\
    signers:
      steps:
        - {quote_contact: true}
        - [{user: emily.carter@northwind.example}]
      on_expiry: {status: Rejected}
"""


def _rules_with_signers(tmp_path: Path, pki: DemoPki) -> Path:
    text = RULES_TEMPLATE.format(p12=pki.signer_p12_path, root=pki.root_cert_pem_path, passphrase_env=PASSPHRASE_ENV)
    quote = 'file_name: "Quote {number} {date}.pdf"\n'
    assert quote in text
    path = tmp_path / "rules-with-signers.yaml"
    path.write_text(text.replace(quote, quote + QUOTE_SIGNERS))
    return path


async def test_run_refuses_to_start_without_a_relay_when_a_rule_has_signers(
        settings: Settings, pki: DemoPki, tmp_path: Path) -> None:
    path = _rules_with_signers(tmp_path, pki)
    ran = await asyncio.to_thread(run_cli, ["run"], settings, timeout=90.0, SFSIGN_RULES_FILE=str(path))
    assert ran.returncode == 3, ran.stdout + ran.stderr
    assert "sfsign: refusing to start" in ran.stderr and "mail relay" in ran.stderr, ran.stderr
    assert "rule(s) 'quote-approved' have signers, but SFSIGN_SMTP_URL is not set" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr
    checked = await asyncio.to_thread(run_cli, ["check"], settings, SFSIGN_RULES_FILE=str(path))
    assert checked.returncode == 1 and "SFSIGN_SMTP_URL is not set" in checked.stdout, checked.stdout


async def _answer(url: str) -> int | None:
    """The status the pages answer `url` with; None while nothing listens."""
    try:
        async with aiohttp.ClientSession() as client, client.get(url) as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return None


async def test_sfsign_run_serves_the_signing_pages_until_sigterm(settings: Settings, pki: DemoPki,
                                                                 tmp_path: Path) -> None:
    path = _rules_with_signers(tmp_path, pki)
    port = free_port()
    with LocalMailServer(tmp_path / "relay", security=ServerSecurity.PLAIN) as relay:
        env = run_env(settings, path, relay, port, tmp_path)
        log = tmp_path / "daemon.log"
        proc = await start_run(env, log)
        try:
            async with asyncio.timeout(WAIT_S):
                while (status := await _answer(f"http://127.0.0.1:{port}/s/no-such-link")) is None:
                    assert proc.returncode is None, log.read_text()[-3000:]
                    await asyncio.sleep(0.1)
            assert status == 404  # the pages' own answer to an unknown link
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT_S):
                assert await proc.wait() == 0, log.read_text()[-3000:]
            assert await _answer(f"http://127.0.0.1:{port}/s/no-such-link") is None
        finally:
            await kill(proc)
    sys.stdout.write(log.read_text())  # into the capture the secret scan reads


async def test_a_queued_invitation_goes_out_through_the_daemon_and_its_link_opens_its_pages(
        settings: Settings, pki: DemoPki, tmp_path: Path) -> None:
    rules = load_rules(_rules_with_signers(tmp_path, pki))
    async with run_daemon(settings.model_copy(update={"rules_file": rules.source}), rules) as daemon:
        assert daemon.signing is not None and daemon.signing.listener is not None
        assert (await daemon.readiness()).checks["signing_pages"] is True
        assert b"sfsign_mails_pending 0.0" in await daemon.metrics_text()
        job = (await daemon.outbox.commit_event(None, None, [
            NewJob("tx-wired-1", "quote-approved", "Quote", "0Q0000000000009AAA", "cdc")])).created[0]
        signer = ResolvedSigner(1, "Ada Customer", "ada@customer.example", SignerSource.QUOTE_EMAIL)
        keys = LinkKeys.load(daemon.settings.data_dir)
        envelope = await daemon.outbox.create_envelope(job, [signer], EnvelopePolicy(), time.time(), keys)
        mailbox = Mailbox(daemon.settings.data_dir / MAILBOX)
        mail = await asyncio.to_thread(mailbox.wait_for, lambda m: m.recipients == ["ada@customer.example"],
                                       timeout_s=WAIT_S)
        [row] = [m for m in await daemon.outbox.envelope_mails(envelope.id) if m.kind is MailKind.INVITATION]
        assert mail.message_id == row.message_id
        [link] = [u for u in mail.links if "/s/" in u]
        assert link.startswith(f"{daemon.settings.signing_url}/s/")
        assert await _answer(link) == 200
        port = daemon.signing.listener.port
    assert await _answer(f"http://127.0.0.1:{port}/s/x") is None  # stopped with the daemon


@pytest.fixture(autouse=True)
def _no_relay_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SFSIGN_SMTP_URL", raising=False)


async def test_an_invitation_the_relay_kept_before_a_kill_9_goes_again_with_the_same_message_id(
        settings: Settings, pki: DemoPki, control: ControlClient, tmp_path: Path) -> None:
    """`sfsign run` is killed (SIGKILL) after the relay stored the invitation and before its 250 reached the
    daemon, so the outbox never committed it as sent. Restarted, the daemon sends it again: the customer's
    mailbox holds it twice with one Message-ID (a mail client shows one message), the outbox one invitation
    row, sent; one envelope, one recipient, and no other mail twice."""
    path = _rules_with_signers(tmp_path, pki)
    port = free_port()
    quote = await record_id(control, "Quote", "Enterprise Upgrade - Angebot")
    contact = (await control.query(f"SELECT Contact.Email FROM Quote WHERE Id = '{quote}'"))[0]["Contact"]["Email"]
    with LocalMailServer(tmp_path / "relay", security=ServerSecurity.PLAIN) as relay:
        env = run_env(settings, path, relay, port, tmp_path)
        log = tmp_path / "daemon.log"
        killed: list[int] = []

        def kill_before_the_250(stored: Path) -> None:
            if not killed and contact in stored.read_text(errors="replace"):
                killed.append(first.pid)
                os.killpg(first.pid, signal.SIGKILL)

        relay.after_store = kill_before_the_250
        first = await start_run(env, log)
        try:
            await subscribed(first, log)  # the stage change must come after: a first start reads new events
            await control.update("Quote", quote, {"Status": "Approved"}, user=REP)
            try:
                async with asyncio.timeout(WAIT_S * 2):
                    code = await first.wait()
            except TimeoutError:
                raise AssertionError(f"not killed: {sorted(p.name for p in relay.directory.glob('*'))}\n"
                                     + log.read_text()[-4000:]) from None
            assert code == -signal.SIGKILL, log.read_text()[-3000:]
            assert killed
            relay.after_store = None
            second = await start_run(env, log)
            try:
                mailbox = Mailbox(relay.directory)
                async with asyncio.timeout(WAIT_S * 2):
                    while len(mailbox.to(contact)) < 2:
                        assert second.returncode is None, log.read_text()[-3000:]
                        await asyncio.sleep(0.1)
                second.send_signal(signal.SIGTERM)
                async with asyncio.timeout(WAIT_S):
                    assert await second.wait() == 0, log.read_text()[-3000:]
            finally:
                await kill(second)
        finally:
            await kill(first)
    mails = Mailbox(relay.directory).to(contact)
    assert len(mails) == 2 and mails[0].message_id == mails[1].message_id, [m.message_id for m in mails]
    store = OutboxStore(settings.data_dir / "outbox.sqlite")
    try:
        [envelope] = store.envelopes()
        assert len(store.recipients(envelope.id)) == 2  # the quote's contact now, the counter-signer later
        invitations = [m for m in store.envelope_mails(envelope.id) if m.kind is MailKind.INVITATION]
        assert [(m.message_id, m.state.value) for m in invitations] == [(mails[0].message_id, "sent")]
    finally:
        store.close()
    sys.stdout.write(log.read_text())  # into the capture the secret scan reads
