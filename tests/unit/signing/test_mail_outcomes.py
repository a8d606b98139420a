"""What each answer a relay can give means for the mail, for the answers the embedded server does not play
(the e2e tests in tests/e2e/test_mail_relay.py drive the others over real sockets). The exceptions are
aiosmtplib's own, built as aiosmtplib raises them."""

from __future__ import annotations

import ssl

import aiosmtplib
import pytest

from sfsign.config.smtp import SmtpSecurity
from sfsign.signing.mailer import FIX_CREDENTIALS, FIX_SENDER, SendStatus, classify


def _caused(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(("exc", "status"), [
    (aiosmtplib.SMTPConnectTimeoutError("Timed out connecting to relay on port 587"), SendStatus.RETRY),
    (aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"), SendStatus.RETRY),
    (aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"), SendStatus.RETRY),
    (_caused(aiosmtplib.SMTPConnectError("Error connecting"), ConnectionResetError()), SendStatus.RETRY),
    (aiosmtplib.SMTPConnectResponseError(421, "4.3.2 Service shutting down"), SendStatus.RETRY),
    (aiosmtplib.SMTPConnectResponseError(554, "5.3.2 No SMTP service here"), SendStatus.RETRY),
    (aiosmtplib.SMTPAuthenticationError(454, "4.7.0 Temporary authentication failure"), SendStatus.RETRY),
    (aiosmtplib.SMTPDataError(452, "4.3.1 Insufficient system storage"), SendStatus.RETRY),
    (aiosmtplib.SMTPDataError(554, "5.7.1 Message rejected as spam"), SendStatus.REJECTED),
    (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "a@b.example")]),
     SendStatus.REJECTED),
    (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(450, "4.2.0 mailbox busy", "a@b.example")]),
     SendStatus.RETRY),
    (_caused(aiosmtplib.SMTPConnectError("Error connecting"), ssl.SSLCertVerificationError("verify failed")),
     SendStatus.MISCONFIGURED),
])
def test_relay_answers_map_to_outcomes(exc: BaseException, status: SendStatus) -> None:
    assert classify(exc, SmtpSecurity.STARTTLS).status is status


def test_a_sender_the_relay_refuses_names_sfsign_mail_from() -> None:
    outcome = classify(aiosmtplib.SMTPSenderRefused(553, "5.7.1 Sender address rejected", "x@y.example"),
                       SmtpSecurity.IMPLICIT_TLS)
    assert (outcome.status, outcome.fix, outcome.smtp_code) == (SendStatus.MISCONFIGURED, FIX_SENDER, 553)


def test_a_relay_without_auth_names_the_login_settings() -> None:
    outcome = classify(aiosmtplib.SMTPException("The SMTP AUTH extension is not supported by this server."),
                       SmtpSecurity.STARTTLS)
    assert (outcome.status, outcome.fix) == (SendStatus.MISCONFIGURED, FIX_CREDENTIALS)
