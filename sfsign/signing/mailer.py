"""Sending one composed mail through the org's relay, and saying what became of it.

Why outcomes and not exceptions: the caller (the outbox's mail queue) must decide per mail whether to mark
it sent, try again later, or record a refusal on the envelope and the record, and each of those is a
normal day at a relay. So every answer is a `SendOutcome`:
- DELIVERED: the relay accepted it (250 after DATA).
- RETRY: nothing is wrong with the mail: the relay is down, slow, or answered 4xx. Send it again later,
  unchanged (same Message-ID).
- REJECTED: the relay refused this recipient (5xx on RCPT) or this message (5xx on DATA) for good; `reply`
  is the relay's own words, for the envelope and the record.
- MISCONFIGURED: the relay refuses *us* (login, certificate, sender, no STARTTLS); `fix` names the setting.
  The mail is not at fault and stays queued, like RETRY, until an operator fixes the settings.

Log lines name the recipient by the id the caller passes (the recipient row), never the address, the
code or the link, and never the password: the relay's reply is logged with the recipient's address and
the password (should a relay echo it) masked. One connection per mail (TLS verified against this
machine's CAs and the relay CA bundle); the loop never waits on CPU work: the mail is rendered and
flattened on a worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.policy
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from enum import StrEnum

import aiosmtplib

from sfsign.config.smtp import SmtpRelay, SmtpSecurity
from sfsign.ops.logging import MASK, get_logger
from sfsign.salesforce.auth import build_ssl_context
from sfsign.signing.mail_messages import MailRequest, Party, compose

log = get_logger(__name__)

FIX_CREDENTIALS = ("check SFSIGN_SMTP_USERNAME and SFSIGN_SMTP_PASSWORD (the relay's login; the password is "
                   "the file SFSIGN_SMTP_PASSWORD in the secrets directory, SFSIGN_SECRETS_DIR)")
FIX_TRUST = ("the relay's certificate is not trusted for this host name: set SFSIGN_SMTP_CA_BUNDLE to the CA that "
             "issued it, or fix the host in SFSIGN_SMTP_URL to the name the certificate carries")
FIX_STARTTLS = ("the relay offers no STARTTLS: use smtps://HOST:465 in SFSIGN_SMTP_URL if it speaks implicit TLS, "
                "or a relay that encrypts")
FIX_SENDER = "the relay refuses the sender: set SFSIGN_MAIL_FROM to an address this relay may send for"
FIX_OTHER = "the relay refused the session: check SFSIGN_SMTP_URL and the relay's log"


class SendStatus(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"
    MISCONFIGURED = "misconfigured"


@dataclass(frozen=True)
class SendOutcome:
    """What became of one mail; `reply` is the relay's answer (or the connection error), `fix` what to change."""

    status: SendStatus
    reply: str = ""
    smtp_code: int | None = None
    fix: str = ""

    @property
    def send_again(self) -> bool:
        """The mail stays queued: RETRY and MISCONFIGURED (the mail is fine, the way to the relay is not)."""
        return self.status in (SendStatus.RETRY, SendStatus.MISCONFIGURED)


class Mailer:
    """Sends `MailRequest`s through one relay. Build it at start: loading the CA bundle reads files."""

    def __init__(self, relay: SmtpRelay) -> None:
        self.relay = relay
        self._tls = build_ssl_context(relay.ca_bundle)

    async def send(self, request: MailRequest, *, log_id: str) -> SendOutcome:
        """Compose and send `request`; `log_id` names the recipient in log lines (never the address)."""
        sender, recipient = self.relay.mail_from.address, request.recipient.ascii_email
        data = await asyncio.to_thread(self._flatten, request)
        client = self._client()
        try:
            await client.connect()
            _, reply = await client.sendmail(sender, [recipient], data)
        except (aiosmtplib.SMTPException, OSError) as exc:
            outcome = classify(exc, self.relay.security)
        else:
            outcome = SendOutcome(SendStatus.DELIVERED, reply=reply)
        finally:
            await _quit_quietly(client)
        self._log(outcome, request, log_id)
        return outcome

    async def probe(self, *, timeout_s: float | None = None) -> SendOutcome:
        """Open a session as `send` does (connect, EHLO, STARTTLS or implicit TLS as the URL says, AUTH when a
        login is configured), offer the sender (MAIL FROM, then RSET: a relay that wants a login or refuses
        the sender says so there) and QUIT, sending no mail. DELIVERED means the relay would take a mail;
        otherwise the outcome says why, as for a mail (`fix`: the setting to change)."""
        client = self._client(timeout_s)
        try:
            await client.connect()
            await client.ehlo()
            await client.mail(self.relay.mail_from.address)
            await client.rset()
        except (aiosmtplib.SMTPException, OSError) as exc:
            outcome = classify(exc, self.relay.security)
        else:
            outcome = SendOutcome(SendStatus.DELIVERED, reply="the relay accepts the sender; no mail was sent")
        finally:
            await _quit_quietly(client)
        return dataclasses.replace(outcome, reply=self._scrub(outcome.reply, ""))  # a relay may echo the password

    def _flatten(self, request: MailRequest) -> bytes:
        """The wire bytes: CRLF lines, headers in ASCII (RFC 2047 words for names)."""
        message: EmailMessage = compose(request, self.relay.mail_from)
        return message.as_bytes(policy=email.policy.SMTP)

    def _client(self, timeout_s: float | None = None) -> aiosmtplib.SMTP:
        relay = self.relay
        password = relay.password.get_secret_value() if relay.password is not None else None
        return aiosmtplib.SMTP(
            hostname=relay.host, port=relay.port, timeout=timeout_s or relay.timeout_s, tls_context=self._tls,
            use_tls=relay.security is SmtpSecurity.IMPLICIT_TLS,
            start_tls=relay.security is SmtpSecurity.STARTTLS,  # required, never opportunistic
            username=relay.username, password=password,
        )

    def _log(self, outcome: SendOutcome, request: MailRequest, log_id: str) -> None:
        fields = {"kind": request.kind.value, "recipient": log_id, "message_id": request.message_id,
                  "relay": self.relay.url}
        reply = self.scrub(outcome.reply, request.recipient)
        if outcome.status is SendStatus.DELIVERED:
            log.info("mail delivered to the relay", **fields)
        elif outcome.status is SendStatus.RETRY:
            log.warning("mail not sent; will retry", reply=reply, smtp_code=outcome.smtp_code, **fields)
        elif outcome.status is SendStatus.REJECTED:
            log.warning("mail rejected by the relay", reply=reply, smtp_code=outcome.smtp_code, **fields)
        else:
            log.error("the relay refuses sfsign's settings; mail stays queued", reply=reply, fix=outcome.fix,
                      smtp_code=outcome.smtp_code, **fields)

    def scrub(self, text: str, recipient: Party) -> str:
        """`text` (a relay's reply) without the recipient's address (either spelling) and the relay password:
        what a log line, the mail row and the envelope's timeline may keep."""
        return self._scrub(self._scrub(text, recipient.ascii_email), recipient.email)

    def _scrub(self, text: str, address: str) -> str:
        """`text` without the recipient's address and the relay password, for a log line."""
        bracketed = f"<{address}>" if address else ""  # "<a@b>" as one: "<recipient>", not "<<recipient>>"
        masked = _replace_folded(_replace_folded(text, bracketed, "<recipient>"), address, "<recipient>")
        if self.relay.password is not None and self.relay.password.get_secret_value():
            masked = masked.replace(self.relay.password.get_secret_value(), MASK)
        return masked


def _replace_folded(text: str, needle: str, replacement: str) -> str:
    lowered, target, out, start = text.lower(), needle.lower(), [], 0
    while needle and (hit := lowered.find(target, start)) >= 0:
        out += [text[start:hit], replacement]
        start = hit + len(needle)
    return "".join(out) + text[start:]


def classify(exc: BaseException, security: SmtpSecurity) -> SendOutcome:
    """What an exception from the relay session means for the mail (see the module's docstring)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _by_reply(exc)
    if _caused_by(exc, ssl.SSLCertVerificationError):
        return SendOutcome(SendStatus.MISCONFIGURED, reply=_text(exc), fix=FIX_TRUST)
    if security is SmtpSecurity.STARTTLS and "STARTTLS extension not supported" in str(exc):
        return SendOutcome(SendStatus.MISCONFIGURED, reply=_text(exc), fix=FIX_STARTTLS)
    if isinstance(exc, aiosmtplib.SMTPException) and "auth" in str(exc).lower():  # no AUTH offered
        return SendOutcome(SendStatus.MISCONFIGURED, reply=_text(exc), fix=FIX_CREDENTIALS)
    # Refused, reset, timed out, a handshake cut short: the relay is down or unreachable for now.
    return SendOutcome(SendStatus.RETRY, reply=_text(exc))


def _by_reply(exc: aiosmtplib.SMTPResponseException) -> SendOutcome:
    code, reply = exc.code, f"{exc.code} {exc.message}"
    if 400 <= code < 500 or isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        return SendOutcome(SendStatus.RETRY, reply=reply, smtp_code=code)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return SendOutcome(SendStatus.MISCONFIGURED, reply=reply, smtp_code=code, fix=FIX_CREDENTIALS)
    if code == 530:  # "authentication required" (on MAIL FROM): a relay that wants a login we did not give
        return SendOutcome(SendStatus.MISCONFIGURED, reply=reply, smtp_code=code, fix=FIX_CREDENTIALS)
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return SendOutcome(SendStatus.MISCONFIGURED, reply=reply, smtp_code=code, fix=FIX_SENDER)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError):
        return SendOutcome(SendStatus.REJECTED, reply=reply, smtp_code=code)
    return SendOutcome(SendStatus.MISCONFIGURED, reply=reply, smtp_code=code, fix=FIX_OTHER)


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _quit_quietly(client: aiosmtplib.SMTP) -> None:
    """QUIT after the outcome is known: a relay that drops the line now changes nothing about the mail."""
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()
