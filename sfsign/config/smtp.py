"""The mail relay's settings: which relay, how it is secured, who the mail is from.

Apart from `settings.py` so that the rules for a relay URL (encryption is not optional) and for a From
address can be read and tested on their own; `Settings.smtp_relay()` turns the `SFSIGN_SMTP_*` and
`SFSIGN_MAIL_FROM` values into one `SmtpRelay` the mailer takes.

An unencrypted relay is accepted only on the loopback interface (`smtp+insecure://127.0.0.1:PORT`, for a
relay on the same host or a test): invitations carry signing links and one-time codes, so a cleartext hop
across a network would hand them to whoever listens.
"""

from __future__ import annotations

import email.policy
import ipaddress
from dataclasses import dataclass, field
from email.headerregistry import Address
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

SMTP_URL_FIX = ("set SFSIGN_SMTP_URL to smtp://HOST:587 (STARTTLS, required) or smtps://HOST:465 (implicit TLS); "
                "smtp+insecure://127.0.0.1:PORT only for a relay on this host")
MAIL_FROM_FIX = 'set SFSIGN_MAIL_FROM to an address with a display name, e.g. "Acme Contracts <contracts@acme.example>"'
LOOPBACK_NAMES = frozenset({"localhost"})


class SmtpSecurity(StrEnum):
    """How the connection to the relay is encrypted; the URL scheme says which."""

    STARTTLS = "smtp"  # plain connect, then STARTTLS: refused if the relay does not offer it
    IMPLICIT_TLS = "smtps"  # TLS from the first byte
    INSECURE_LOOPBACK = "smtp+insecure"  # no encryption, 127.0.0.1 only


DEFAULT_PORTS = {SmtpSecurity.STARTTLS: 587, SmtpSecurity.IMPLICIT_TLS: 465, SmtpSecurity.INSECURE_LOOPBACK: 25}


@dataclass(frozen=True)
class MailFrom:
    """The From of every mail: an address and the name a recipient sees."""

    display_name: str
    address: str

    def header(self) -> Address:
        return Address(display_name=self.display_name, addr_spec=self.address)


@dataclass(frozen=True)
class SmtpRelay:
    """Everything the mailer needs to reach the relay. `ca_bundle`: one extra CA to trust besides this
    machine's (as SFSIGN_CA_BUNDLE is for Salesforce); verification is never switched off."""

    host: str
    port: int
    security: SmtpSecurity
    mail_from: MailFrom
    timeout_s: float = 30.0
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    ca_bundle: Path | None = None

    @property
    def url(self) -> str:
        """The relay's URL without credentials, for log lines and messages."""
        return f"{self.security.value}://{self.host}:{self.port}"


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_smtp_url(url: str) -> tuple[SmtpSecurity, str, int]:
    """(security, host, port) of a relay URL; a ValueError says what is wrong and how to fix it."""
    parts = urlsplit(url.strip())
    try:
        security = SmtpSecurity(parts.scheme.lower())
    except ValueError:
        raise ValueError(f"{url!r} has no known scheme: {SMTP_URL_FIX}") from None
    if parts.username or parts.password:
        raise ValueError("must not carry credentials: set SFSIGN_SMTP_USERNAME and SFSIGN_SMTP_PASSWORD "
                         "(the password from the secrets directory) instead")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r} must be scheme://host[:port] and nothing else: {SMTP_URL_FIX}")
    try:
        port = parts.port or DEFAULT_PORTS[security]
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}: {SMTP_URL_FIX}") from None
    if security is SmtpSecurity.INSECURE_LOOPBACK and not is_loopback(parts.hostname):
        raise ValueError(f"an unencrypted relay is refused on {parts.hostname} (not this host): signing links and "
                         f"codes would cross the network in clear text; {SMTP_URL_FIX}")
    return security, parts.hostname, port


def parse_mail_from(value: str) -> MailFrom:
    """`Display Name <address@domain>`; the name is required, since it is what a recipient recognises."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"must be one line: {MAIL_FROM_FIX}")
    header = email.policy.default.header_factory("From", value)
    addresses: tuple[Address, ...] = tuple(getattr(header, "addresses", ()))
    if len(addresses) != 1 or header.defects or not addresses[0].domain or not addresses[0].username:
        raise ValueError(f"{value!r} is not one address: {MAIL_FROM_FIX}")
    if not addresses[0].display_name.strip():
        raise ValueError(f"{value!r} has no display name: {MAIL_FROM_FIX}")
    return MailFrom(display_name=addresses[0].display_name.strip(), address=addresses[0].addr_spec)
