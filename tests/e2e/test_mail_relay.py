"""The mailer against a real SMTP server on 127.0.0.1 (the embedded one), over real TLS with a certificate
from the local PKI: every kind delivered and read back from the stored .eml, and each failure a relay can
answer with (down, 4xx, a rejected recipient, a wrong login, an untrusted certificate, no STARTTLS)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import json
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr
from secret_scan import register_secret

from sfsign.config.smtp import SmtpRelay, SmtpSecurity, parse_mail_from
from sfsign.localmail.mailbox import Mailbox, StoredMail
from sfsign.localmail.server import LocalMailServer, ServerCredentials, ServerSecurity
from sfsign.localpki.pki import DemoPki
from sfsign.localpki.tls_server import TlsServerFiles, issue_tls_server
from sfsign.ops.logging import configure_logging
from sfsign.signing.mail_messages import Attachment, MailRequest, Party
from sfsign.signing.mailer import Mailer, SendStatus
from sfsign.signing.model import MailKind

SENDER = "Northwind Verträge <contracts@northwind.example>"
PDF = b"%PDF-1.7\n%signed\n" + bytes(range(256)) * 4


@pytest.fixture(scope="module")
def relay_password() -> str:
    password = secrets.token_urlsafe(16)
    register_secret(password)
    return password


@pytest.fixture(scope="module")
def tls_files(pki: DemoPki, tmp_path_factory: pytest.TempPathFactory) -> TlsServerFiles:
    return issue_tls_server(pki, tmp_path_factory.mktemp("smtp-tls"))


def _server(security: ServerSecurity, directory: Path, tls: TlsServerFiles,
            credentials: ServerCredentials | None = None) -> LocalMailServer:
    return LocalMailServer(directory, security=security, cert_file=tls.cert_file, key_file=tls.key_file,
                           credentials=credentials)


@pytest.fixture(scope="module")
def starttls_server(tls_files: TlsServerFiles, tmp_path_factory: pytest.TempPathFactory,
                    relay_password: str) -> Iterator[LocalMailServer]:
    """The usual submission relay: STARTTLS on a submission port, login required."""
    with _server(ServerSecurity.STARTTLS, tmp_path_factory.mktemp("mailbox-starttls"), tls_files,
                 ServerCredentials("sfsign@northwind.example", relay_password)) as server:
        yield server


@pytest.fixture(scope="module")
def implicit_server(tls_files: TlsServerFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMailServer]:
    """Implicit TLS (port 465 style), no login."""
    with _server(ServerSecurity.IMPLICIT_TLS, tmp_path_factory.mktemp("mailbox-implicit"), tls_files) as server:
        yield server


def relay_for(server: LocalMailServer, tls: TlsServerFiles | None, *, username: str | None = None,
              password: str | None = None, host: str = "127.0.0.1", timeout_s: float = 5.0) -> SmtpRelay:
    return SmtpRelay(host=host, port=server.port, security=SmtpSecurity(server.security.value),
                     mail_from=parse_mail_from(SENDER), timeout_s=timeout_s, username=username,
                     password=SecretStr(password) if password is not None else None,
                     ca_bundle=tls.ca_file if tls is not None else None)


def request(kind: MailKind, recipient: str, *, language: str = "en", attach: bool = True) -> MailRequest:
    return MailRequest(
        kind=kind, language=language, recipient=Party("Jürgen Groß", recipient),  # type: ignore[arg-type]
        sender_org="Northwind Cloud GmbH", owner=Party("Ana Rep", "ana.rep@northwind.example"),
        document_title="Angebot Q-0042", message_id=f"<{uuid.uuid4().hex}@sfsign.northwind.example>",
        link_url=f"https://sign.northwind.example/s/{secrets.token_urlsafe(24)}",
        code=f"{secrets.randbelow(10**6):06d}",
        code_valid_minutes=10, expires_on=dt.date(2027, 1, 5), reason="Preis zu hoch", declined_by="Jürgen Groß",
        attachment=Attachment("Angebot-Q-0042.pdf", PDF) if kind is MailKind.COMPLETED and attach else None,
    )


def new_recipient() -> str:
    return f"kunde-{uuid.uuid4().hex[:10]}@kunde.example"


def stored(server: LocalMailServer, recipient: str) -> list[StoredMail]:
    return Mailbox(server.directory).to(recipient)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_every_kind_is_delivered_and_reads_back_from_the_mailbox(
        mode: str, starttls_server: LocalMailServer, implicit_server: LocalMailServer, tls_files: TlsServerFiles,
        relay_password: str) -> None:
    server = starttls_server if mode == "starttls" else implicit_server
    login = {"username": "sfsign@northwind.example", "password": relay_password} if mode == "starttls" else {}
    mailer = Mailer(relay_for(server, tls_files, **login))
    recipient = new_recipient()
    sent = {kind: request(kind, recipient, language="de" if kind is MailKind.CODE else "en") for kind in MailKind}
    for kind, req in sent.items():
        outcome = await mailer.send(req, log_id=f"rcp-{kind.value}")
        assert outcome.status is SendStatus.DELIVERED, outcome
    mails = {mail.message_id: mail for mail in stored(server, recipient)}
    assert set(mails) == {req.message_id for req in sent.values()}
    for kind, req in sent.items():
        mail = mails[req.message_id]
        assert mail.recipients == [recipient] and mail.message["Return-Path"] == "<contracts@northwind.example>"
        assert mail.message["From"].addresses[0].display_name == "Northwind Verträge"
        assert mail.message["To"].addresses[0].display_name == "Jürgen Groß"
        assert mail.message["Reply-To"].addresses[0].addr_spec == "ana.rep@northwind.example"
        if kind in (MailKind.INVITATION, MailKind.REMINDER):
            assert mail.links[0] == req.link_url
        assert (mail.attachments == [("Angebot-Q-0042.pdf", PDF)]) is (kind is MailKind.COMPLETED), kind
    assert mails[sent[MailKind.CODE].message_id].one_time_code == sent[MailKind.CODE].code
    assert "Ihr Code" in mails[sent[MailKind.CODE].message_id].subject


async def test_an_internationalised_domain_goes_out_in_its_ascii_form(
        implicit_server: LocalMailServer, tls_files: TlsServerFiles) -> None:
    local = f"juergen-{uuid.uuid4().hex[:6]}"
    req = request(MailKind.INVITATION, f"{local}@kunde-müller.example")
    assert (await Mailer(relay_for(implicit_server, tls_files)).send(req, log_id="r")).status is SendStatus.DELIVERED
    (mail,) = stored(implicit_server, f"{local}@xn--kunde-mller-zhb.example")
    assert mail.message["To"].addresses[0].addr_spec == f"{local}@xn--kunde-mller-zhb.example"
    assert mail.links[0] == req.link_url


async def test_a_second_send_of_the_same_request_carries_the_same_message_id(
        implicit_server: LocalMailServer, tls_files: TlsServerFiles) -> None:
    mailer, recipient = Mailer(relay_for(implicit_server, tls_files)), new_recipient()
    req = request(MailKind.INVITATION, recipient)
    for _ in range(2):
        assert (await mailer.send(req, log_id="rcp-1")).status is SendStatus.DELIVERED
    first, second = stored(implicit_server, recipient)
    assert first.message_id == second.message_id == req.message_id
    assert first.text == second.text


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_a_relay_that_is_down_means_retry_later_and_nothing_lost(
        mode: str, tls_files: TlsServerFiles, tmp_path: Path) -> None:
    security = ServerSecurity.STARTTLS if mode == "starttls" else ServerSecurity.IMPLICIT_TLS
    with _server(security, tmp_path / "mailbox", tls_files) as server:
        mailer, recipient = Mailer(relay_for(server, tls_files)), new_recipient()
        req = request(MailKind.INVITATION, recipient)
        server.set_down(True)
        outcome = await mailer.send(req, log_id="rcp-1")
        assert outcome.status is SendStatus.RETRY and outcome.send_again, outcome
        assert "refused" in outcome.reply.lower() or "connect" in outcome.reply.lower(), outcome.reply
        assert stored(server, recipient) == []
        server.set_down(False)
        assert (await mailer.send(req, log_id="rcp-1")).status is SendStatus.DELIVERED
        assert [m.message_id for m in stored(server, recipient)] == [req.message_id]


async def test_a_temporary_refusal_means_retry_later(starttls_server: LocalMailServer, tls_files: TlsServerFiles,
                                                      relay_password: str) -> None:
    mailer = Mailer(relay_for(starttls_server, tls_files, username="sfsign@northwind.example",
                              password=relay_password))
    starttls_server.deferred = True
    try:
        outcome = await mailer.send(request(MailKind.REMINDER, new_recipient()), log_id="rcp-1")
    finally:
        starttls_server.deferred = False
    assert (outcome.status, outcome.smtp_code) == (SendStatus.RETRY, 451), outcome
    assert "try again later" in outcome.reply


async def test_a_rejected_recipient_is_permanent_with_the_relays_words(
        starttls_server: LocalMailServer, tls_files: TlsServerFiles, relay_password: str) -> None:
    mailer = Mailer(relay_for(starttls_server, tls_files, username="sfsign@northwind.example",
                              password=relay_password))
    recipient = new_recipient()
    starttls_server.rejected_recipients.add(recipient)
    output = io.StringIO()
    with _json_logs(output):
        outcome = await mailer.send(request(MailKind.INVITATION, recipient), log_id="rcp-42")
    assert (outcome.status, outcome.smtp_code, outcome.send_again) == (SendStatus.REJECTED, 550, False), outcome
    assert "Recipient address rejected" in outcome.reply and recipient in outcome.reply  # for the envelope
    (line,) = [json.loads(line) for line in output.getvalue().splitlines()]
    assert (line["event"], line["recipient"], line["smtp_code"]) == ("mail rejected by the relay", "rcp-42", 550)
    assert recipient not in output.getvalue() and "Recipient address rejected" in line["reply"]
    assert stored(starttls_server, recipient) == []


async def test_a_wrong_login_is_a_clear_error_that_never_shows_the_password(
        starttls_server: LocalMailServer, tls_files: TlsServerFiles) -> None:
    wrong = secrets.token_urlsafe(16)
    register_secret(wrong)
    mailer = Mailer(relay_for(starttls_server, tls_files, username="sfsign@northwind.example", password=wrong))
    req = request(MailKind.CODE, new_recipient())
    output = io.StringIO()
    with _json_logs(output):
        outcome = await mailer.send(req, log_id="rcp-7")
    assert outcome.status is SendStatus.MISCONFIGURED and outcome.send_again, outcome
    assert outcome.smtp_code == 535 and "SFSIGN_SMTP_USERNAME and SFSIGN_SMTP_PASSWORD" in outcome.fix
    everything = output.getvalue() + repr(outcome) + str(outcome) + repr(mailer.relay)
    for secret in (wrong, req.code or "", req.link_url or "", req.recipient.email):
        assert secret not in everything
    assert json.loads(output.getvalue().splitlines()[0])["fix"] == outcome.fix


async def test_a_relay_that_wants_a_login_we_lack_names_the_settings(
        starttls_server: LocalMailServer, tls_files: TlsServerFiles) -> None:
    outcome = await Mailer(relay_for(starttls_server, tls_files)).send(request(MailKind.CODE, new_recipient()),
                                                                       log_id="rcp-1")
    assert (outcome.status, outcome.smtp_code) == (SendStatus.MISCONFIGURED, 530), outcome
    assert "SFSIGN_SMTP_USERNAME" in outcome.fix


async def test_an_untrusted_relay_certificate_is_a_settings_error_not_a_silent_downgrade(
        implicit_server: LocalMailServer, starttls_server: LocalMailServer, tls_files: TlsServerFiles) -> None:
    for server in (implicit_server, starttls_server):
        outcome = await Mailer(relay_for(server, None)).send(request(MailKind.CODE, new_recipient()), log_id="r")
        assert outcome.status is SendStatus.MISCONFIGURED and "SFSIGN_SMTP_CA_BUNDLE" in outcome.fix, outcome


async def test_a_certificate_for_another_host_name_is_refused(pki: DemoPki, tmp_path: Path) -> None:
    other = issue_tls_server(pki, tmp_path / "tls", hostnames=("relay.northwind.example",), addresses=())
    with _server(ServerSecurity.IMPLICIT_TLS, tmp_path / "mailbox", other) as server:
        outcome = await Mailer(relay_for(server, other)).send(request(MailKind.CODE, new_recipient()), log_id="r")
    assert outcome.status is SendStatus.MISCONFIGURED and "SFSIGN_SMTP_CA_BUNDLE" in outcome.fix, outcome
    assert "hostname" in outcome.reply.lower() or "ip address mismatch" in outcome.reply.lower(), outcome.reply


async def test_starttls_is_required_never_opportunistic(tls_files: TlsServerFiles, tmp_path: Path) -> None:
    with LocalMailServer(tmp_path / "mailbox", security=ServerSecurity.PLAIN) as plain:
        recipient = new_recipient()
        relay = relay_for(plain, tls_files)
        relay = dataclasses.replace(relay, security=SmtpSecurity.STARTTLS)
        outcome = await Mailer(relay).send(request(MailKind.CODE, recipient), log_id="r")
        assert outcome.status is SendStatus.MISCONFIGURED and "STARTTLS" in outcome.fix, outcome
        assert stored(plain, recipient) == []
        # the loopback-only cleartext mode, for a relay on this host
        insecure = dataclasses.replace(relay, security=SmtpSecurity.INSECURE_LOOPBACK)
        assert (await Mailer(insecure).send(request(MailKind.CODE, recipient), log_id="r")).status is \
            SendStatus.DELIVERED


@contextmanager
def _json_logs(output: io.StringIO) -> Iterator[None]:
    """The production log chain (JSON, redaction), writing to `output`, for the duration of a block."""
    previous = structlog.get_config()
    with redirect_stderr(output):
        configure_logging("INFO", "json")
        try:
            yield
        finally:
            structlog.configure(**previous)


@pytest.mark.parametrize("behaviour", ["closes", "hangs"])
async def test_a_relay_that_drops_or_stalls_the_tls_handshake_means_retry_later(
        behaviour: str, tls_files: TlsServerFiles) -> None:
    """A half-up relay: it accepts the connection, then hangs up (or says nothing) before TLS is set up."""
    held: list[asyncio.StreamWriter] = []

    async def half_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if behaviour == "closes":
            writer.close()
        else:
            held.append(writer)

    listener = await asyncio.start_server(half_up, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        for security in (SmtpSecurity.IMPLICIT_TLS, SmtpSecurity.STARTTLS):
            relay = SmtpRelay(host="127.0.0.1", port=port, security=security, mail_from=parse_mail_from(SENDER),
                              timeout_s=0.3, ca_bundle=tls_files.ca_file)
            outcome = await Mailer(relay).send(request(MailKind.INVITATION, new_recipient()), log_id="r")
            assert outcome.status is SendStatus.RETRY, (security, outcome)
    finally:
        for writer in held:
            writer.close()
        listener.close()
        await listener.wait_closed()
