"""Reading what the embedded SMTP server stored: the messages in arrival order, their text, links, one-time
code and attachments, parsed by the standard library's `email` package as a mail client would.

The demo plays the customer from here (the invitation's link, then the code from the next mail), and the
tests read what a recipient would see rather than what the mailer meant to send.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

_LINK = re.compile(r"https?://[^\s<>\"')]+")
_CODE = re.compile(r"(?<!\d)\d{6}(?!\d)")


@dataclass(frozen=True)
class StoredMail:
    """One .eml file as the server stored it (the envelope's Delivered-To lines first)."""

    path: Path
    message: EmailMessage

    @property
    def recipients(self) -> list[str]:
        """The envelope recipients (Delivered-To), which a Bcc would not show in To."""
        return [str(v) for v in self.message.get_all("Delivered-To", [])]

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"] or "")

    def body(self, subtype: str) -> str:
        """The text/`subtype` part ("plain" or "html"), decoded; empty when there is none."""
        part = self.message.get_body(preferencelist=(subtype,))
        return part.get_content() if part is not None and part.get_content_subtype() == subtype else ""

    @property
    def text(self) -> str:
        return self.body("plain")

    @property
    def html(self) -> str:
        return self.body("html")

    @property
    def links(self) -> list[str]:
        """The URLs in the text part, in order."""
        return _LINK.findall(self.text)

    @property
    def one_time_code(self) -> str | None:
        """The first six-digit number of the text part (the code mail's code)."""
        found = _CODE.search(self.text)
        return found.group(0) if found else None

    @property
    def attachments(self) -> list[tuple[str, bytes]]:
        """(filename, content) of each attachment."""
        return [(part.get_filename() or "", part.get_content()) for part in self.message.iter_attachments()]


class Mailbox:
    """The directory the embedded server writes to."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def messages(self) -> list[StoredMail]:
        """Every stored message, oldest first (the file names sort by arrival)."""
        if not self.directory.is_dir():
            return []
        return [read_eml(path) for path in sorted(self.directory.glob("*.eml"))]

    def to(self, address: str) -> list[StoredMail]:
        """The messages delivered to `address`, oldest first."""
        return [m for m in self.messages() if address.lower() in (r.lower() for r in m.recipients)]

    def wait_for(self, predicate: Callable[[StoredMail], bool], *, timeout_s: float = 10.0,
                 poll_s: float = 0.02) -> StoredMail:
        """The first stored message that satisfies `predicate`, polling until `timeout_s` (blocking)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for mail in self.messages():
                if predicate(mail):
                    return mail
            if time.monotonic() > deadline:
                raise TimeoutError(f"no such message in {self.directory} after {timeout_s} s")
            time.sleep(poll_s)


def read_eml(path: Path) -> StoredMail:
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return StoredMail(path=path, message=parsed)
