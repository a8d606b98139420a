"""Composing the envelope's mails: a typed request in, an `email.message.EmailMessage` out.

Why a request type of its own: the outbox persists what a mail needs (with the Message-ID fixed when the
mail is queued) and the mailer sends it; composing in between is a pure function, so the same request
gives the same mail, Message-ID included, however often a crash makes it go out again.

What every mail is: text and HTML alternatives in UTF-8 (mixed when the completed copy is attached),
From the org's sender, Reply-To the record owner (a reply reaches a person), `Auto-Submitted:
auto-generated` (RFC 3834: autoresponders stay quiet). What no mail is: an HTML page that loads anything
(no images, no tracking pixels, no remote CSS), a relative or non-TLS link, or a mail with the document
attached before every signature is on it (`MailRequest` refuses that request, and `compose` attaches
only to a COMPLETED mail).

Texts are templates under `templates/mail/<language>/<kind>.txt|.html`; the subject is the text
template's `subject` block. HTML templates are autoescaped, so a name or a decline reason is text, never
markup.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import jinja2

from sfsign.config.smtp import MailFrom, is_loopback
from sfsign.documents.formatting import format_date
from sfsign.signing.model import MailKind

Language = Literal["en", "de"]
LANGUAGES: tuple[str, ...] = get_args(Language)
TEMPLATES = Path(__file__).parent / "templates" / "mail"
_MESSAGE_ID = re.compile(r"<[^<>@\s]+@[^<>@\s]+>")
#: What each kind cannot go without (the rest is optional); checked when a request is made.
_REQUIRED: dict[MailKind, tuple[str, ...]] = {
    MailKind.INVITATION: ("link_url", "expires_on"),
    MailKind.REMINDER: ("link_url", "expires_on"),
    MailKind.CODE: ("code", "code_valid_minutes"),
    MailKind.REFUSED: ("reason",),
    MailKind.VOIDED: (),
    MailKind.EXPIRED: ("expires_on",),
    MailKind.COMPLETED: (),
}


@dataclass(frozen=True)
class Party:
    """A person as a mail names them: the recipient, or the record owner replies go to."""

    name: str
    email: str

    @property
    def ascii_email(self) -> str:
        """The address as it goes on the wire: an internationalised domain in its ASCII (IDNA) form."""
        local, _, domain = self.email.rpartition("@")
        return f"{local}@{domain.encode('idna').decode('ascii')}" if not domain.isascii() else self.email

    def address(self) -> Address:
        return Address(display_name=self.name, addr_spec=self.ascii_email)


@dataclass(frozen=True)
class Attachment:
    """The completed, signed PDF."""

    filename: str
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class MailRequest:
    """One mail to one recipient, as the outbox queued it.

    `reason`: the decline reason (REFUSED, required) or the void reason (VOIDED, optional); `declined_by`
    names who declined. `code_valid_minutes` says how long `code` works. `link_url` is the signing page
    (INVITATION, REMINDER) or the download page (COMPLETED): absolute https (http only on this host, for
    the demo and tests). `attachment` is allowed on a COMPLETED mail only.
    """

    kind: MailKind
    language: Language
    recipient: Party
    sender_org: str
    owner: Party
    document_title: str
    message_id: str
    link_url: str | None = None
    code: str | None = field(default=None, repr=False)
    code_valid_minutes: int | None = None
    expires_on: dt.date | None = None
    reason: str | None = None
    declined_by: str | None = None
    attachment: Attachment | None = None

    def __post_init__(self) -> None:
        if self.language not in LANGUAGES:
            raise ValueError(f"language {self.language!r}: mails are written in {', '.join(LANGUAGES)}")
        if self.attachment is not None and self.kind is not MailKind.COMPLETED:
            raise ValueError(f"a {self.kind.value} mail never carries the document: only the completed copy does")
        missing = [name for name in _REQUIRED[self.kind] if getattr(self, name) in (None, "")]
        if missing:
            raise ValueError(f"a {self.kind.value} mail needs {', '.join(missing)}")
        if not _MESSAGE_ID.fullmatch(self.message_id):
            raise ValueError("message_id must look like <unique@domain> (RFC 5322 msg-id)")
        if self.link_url is not None:
            _check_link(self.link_url)
        one_line = (self.recipient.name, self.recipient.email, self.owner.name, self.owner.email, self.sender_org,
                    self.document_title, self.declined_by or "")
        if any(ch in value for value in one_line for ch in "\r\n"):
            raise ValueError("names, addresses and the document title must be one line each")
        for party in (self.recipient, self.owner):
            _check_address(party)


def _check_address(party: Party) -> None:
    """One plain address; a non-ASCII local part (RFC 6531) is refused: few relays and mailboxes take it."""
    local, at, domain = party.email.rpartition("@")
    if not at or not local or not domain or any(ch.isspace() or ch in "<>,;" for ch in party.email):
        raise ValueError("an e-mail address must be one plain local@domain address")
    if not local.isascii():
        raise ValueError("an e-mail address with non-ASCII characters before the @ cannot be sent")
    try:
        party.address()
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"an e-mail address that a mail cannot carry ({type(exc).__name__})") from None


def _check_link(url: str) -> None:
    parts = urlsplit(url)
    local_http = parts.scheme == "http" and is_loopback(parts.hostname or "")
    if not (parts.scheme == "https" or local_http) or not parts.hostname:
        raise ValueError("link_url must be an absolute https:// URL (http:// only on this host)")


_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
    undefined=jinja2.StrictUndefined,  # a template naming a field that does not exist fails, never prints ""
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _render(request: MailRequest) -> tuple[str, str, str]:
    """(subject, text, html) of `request`."""
    values: dict[str, Any] = {
        "r": request,
        "expires": format_date(request.expires_on, request.language) if request.expires_on else None,
    }
    stem = f"{request.language}/{request.kind.value}"
    text_template = _environment.get_template(f"{stem}.txt")
    subject = "".join(text_template.blocks["subject"](text_template.new_context(values))).strip()
    text = text_template.render(values)
    html = _environment.get_template(f"{stem}.html").render(values)
    return " ".join(subject.split()), text, html


def compose(request: MailRequest, sender: MailFrom, *, now: dt.datetime | None = None) -> EmailMessage:
    """The mail for `request`, from `sender`; `now` is its Date (default: the current time, UTC)."""
    subject, text, html = _render(request)
    message = EmailMessage()
    message["From"] = sender.header()
    message["To"] = request.recipient.address()
    message["Reply-To"] = request.owner.address()
    message["Subject"] = subject
    message["Date"] = format_datetime(now or dt.datetime.now(dt.UTC))
    message["Message-ID"] = request.message_id
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"  # Exchange's spelling of "no out-of-office replies, please"
    message.set_content(text, charset="utf-8")
    message.add_alternative(html, subtype="html", charset="utf-8")
    if request.kind is MailKind.COMPLETED and request.attachment is not None:
        message.add_attachment(request.attachment.content, maintype="application", subtype="pdf",
                               filename=request.attachment.filename)
    message["Content-Language"] = request.language  # after the parts: set_content drops Content-* headers
    return message
