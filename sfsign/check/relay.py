"""`sfsign check`'s line `mail relay connection`: a session with the org's relay as the mailer opens one, no
mail sent, so a wrong host or port, a login the relay refuses, a certificate this machine does not trust or a
relay without STARTTLS is found before the first invitation waits in the queue.

Why `run` treats the two kinds of failure apart (`relay_startup_finding`): a relay that refuses sfsign's
settings refuses every mail until a person fixes a setting, so `run` stops (exit code 3) with the same
words; a relay that cannot be reached now may be down for maintenance, and the mail queue waits that out
(nothing is lost), as `run` waits out Salesforce or a TSA being unavailable: it says so in the log and starts.
"""

from __future__ import annotations

from sfsign.check.report import Check, fail, ok
from sfsign.config import Settings
from sfsign.config.smtp import SmtpRelay, SmtpSecurity
from sfsign.signing.mailer import Mailer, SendOutcome, SendStatus

NAME = "mail relay connection"
FIX_UNREACHABLE = ("check the host and port in SFSIGN_SMTP_URL (smtp://HOST:587 for STARTTLS, smtps://HOST:465 for "
                   "implicit TLS) and that this machine reaches the relay (firewall, DNS)")
#: How long `run` waits for the relay at start (a relay that does not answer must not hold the daemon up).
STARTUP_TIMEOUT_S = 10.0


async def probe(relay: SmtpRelay, timeout_s: float | None = None) -> SendOutcome:
    """The mailer's own session with the relay (connect, EHLO, TLS, AUTH, MAIL FROM, RSET, QUIT)."""
    return await Mailer(relay).probe(timeout_s=timeout_s)


def finding(relay: SmtpRelay, outcome: SendOutcome) -> Check:
    """The check line for what the relay answered (the reply comes scrubbed of the password)."""
    if outcome.status is SendStatus.DELIVERED:
        how = {SmtpSecurity.STARTTLS: "STARTTLS", SmtpSecurity.IMPLICIT_TLS: "implicit TLS",
               SmtpSecurity.INSECURE_LOOPBACK: "no TLS (this host only)"}[relay.security]
        login = f", logged in as {relay.username}" if relay.username else ", no login"
        return ok(NAME, f"{relay.url}: {how}{login}, sender {relay.mail_from.address} accepted; no mail sent")
    reply = outcome.reply or outcome.status.value
    if outcome.status is SendStatus.RETRY:
        return fail(NAME, f"{relay.url} cannot be reached: {reply}", FIX_UNREACHABLE)
    return fail(NAME, f"{relay.url} refuses sfsign's settings: {reply}", outcome.fix)


async def check_relay_connection(settings: Settings) -> list[Check]:
    """`sfsign check`: the relay, when SFSIGN_SMTP_URL is set (whether or not a rule has signers yet)."""
    relay = settings.smtp_relay()
    if relay is None:
        return []
    return [finding(relay, await probe(relay))]


async def relay_startup_finding(relay: SmtpRelay) -> tuple[Check, bool]:
    """`run`: the relay's check line, and whether it refuses start (the relay refuses sfsign's settings)."""
    outcome = await probe(relay, STARTUP_TIMEOUT_S)
    return finding(relay, outcome), outcome.status is SendStatus.MISCONFIGURED
