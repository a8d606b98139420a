"""The envelope's mails as a recipient's mail client sees them: composed, flattened to the bytes that go to
the relay, and parsed back by the standard library's `email` parser (no fake of our own code)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import re
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest

from sfsign.config.smtp import parse_mail_from
from sfsign.signing.mail_messages import LANGUAGES, Attachment, MailRequest, Party, compose
from sfsign.signing.model import MailKind

SENDER = parse_mail_from("Northwind Verträge <contracts@northwind.example>")
NOW = dt.datetime(2026, 12, 5, 9, 30, tzinfo=dt.UTC)
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 8


def request(kind: MailKind, language: str = "en", **changes: object) -> MailRequest:
    values: dict[str, object] = dict(
        kind=kind, language=language, recipient=Party("Jürgen Groß", "juergen@kunde.example"),
        sender_org="Northwind Cloud GmbH", owner=Party("Ana Rep", "ana.rep@northwind.example"),
        document_title="Angebot Q-0042 <Premium & Co>", message_id="<0b1f.inv.1@sfsign.northwind.example>",
        link_url="https://sign.northwind.example/s/4Fq9", code="480213", code_valid_minutes=10,
        expires_on=dt.date(2027, 1, 5), reason="Preis zu hoch <script>alert(1)</script>", declined_by="Jürgen Groß",
        attachment=Attachment("Angebot Q-0042 (unterschrieben).pdf", PDF) if kind is MailKind.COMPLETED else None,
    )
    values.update(changes)
    return MailRequest(**values)  # type: ignore[arg-type]


def wire(message: EmailMessage) -> EmailMessage:
    """The bytes the mailer sends (CRLF, 7-bit safe headers), parsed back as a mail client parses them."""
    parsed = email.message_from_bytes(message.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", list(MailKind))
def test_every_kind_renders_in_every_language_as_valid_mime(kind: MailKind, language: str) -> None:
    raw = compose(request(kind, language), SENDER, now=NOW).as_bytes(policy=email.policy.SMTP)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and all(len(line) <= 998 for line in raw.split(b"\r\n")), "RFC 5322 2.1.1 / 2.2"
    assert b"To: =?utf-8?" in head, "a non-ASCII name travels as an RFC 2047 encoded word"
    mail = wire(compose(request(kind, language), SENDER, now=NOW))
    for part in mail.walk():
        assert not part.defects, (part.get_content_type(), part.defects)
    assert parsedate_to_datetime(str(mail["Date"])) == NOW
    assert mail["Message-ID"] == "<0b1f.inv.1@sfsign.northwind.example>"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["Content-Language"] == language
    assert mail["From"].addresses[0].display_name == "Northwind Verträge"
    assert mail["From"].addresses[0].addr_spec == "contracts@northwind.example"
    assert (mail["To"].addresses[0].display_name, mail["To"].addresses[0].addr_spec) == (
        "Jürgen Groß", "juergen@kunde.example")
    assert mail["Reply-To"].addresses[0].addr_spec == "ana.rep@northwind.example"
    assert "Angebot Q-0042 <Premium & Co>" in str(mail["Subject"])
    text, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert text is not None and html is not None and text.get_content_charset() == "utf-8"
    greeting = {"en": "Hello Jürgen Groß,", "de": "Guten Tag Jürgen Groß,"}[language]
    assert text.get_content().startswith(greeting) and greeting in html.get_content()
    assert f'<html lang="{language}">' in html.get_content()


def test_subjects_and_texts_are_in_the_recipients_language() -> None:
    en, de = (wire(compose(request(MailKind.INVITATION, lang), SENDER)) for lang in ("en", "de"))
    assert str(en["Subject"]).startswith("Please sign:") and str(de["Subject"]).startswith("Bitte unterschreiben:")
    assert "until 5 January 2027" in en.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "bis zum 5. Januar 2027" in de.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_the_completed_copy_carries_the_signed_pdf_in_a_mixed_message() -> None:
    mail = wire(compose(request(MailKind.COMPLETED), SENDER))
    assert mail.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in mail.iter_parts()] == ["multipart/alternative", "application/pdf"]
    (attachment,) = mail.iter_attachments()
    assert attachment.get_filename() == "Angebot Q-0042 (unterschrieben).pdf"
    assert attachment.get_content() == PDF


def test_a_completed_mail_without_the_pdf_is_text_and_html_only() -> None:
    mail = wire(compose(request(MailKind.COMPLETED, attachment=None), SENDER))
    assert mail.get_content_type() == "multipart/alternative"
    assert list(mail.iter_attachments()) == []


@pytest.mark.parametrize("kind", [k for k in MailKind if k is not MailKind.COMPLETED])
def test_no_mail_before_completion_can_carry_the_document(kind: MailKind) -> None:
    with pytest.raises(ValueError, match="never carries the document"):
        request(kind, attachment=Attachment("contract.pdf", PDF))
    # and what can be made of such a kind has no attachment at all
    assert list(wire(compose(request(kind), SENDER)).iter_attachments()) == []


def test_html_loads_nothing_and_escapes_what_people_typed() -> None:
    for kind in MailKind:
        html = wire(compose(request(kind), SENDER)).get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert not re.search(r"<img|<script|<link|<iframe|url\(|@import|src=", html, re.I), kind
        assert all(href.startswith("https://") for href in re.findall(r'href="([^"]*)"', html)), kind
    refused = wire(compose(request(MailKind.REFUSED), SENDER)).get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in refused and "Angebot Q-0042 &lt;Premium &amp; Co&gt;" in refused


def test_links_carry_the_absolute_https_url_in_both_parts() -> None:
    mail = wire(compose(request(MailKind.INVITATION), SENDER))
    assert "https://sign.northwind.example/s/4Fq9" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert 'href="https://sign.northwind.example/s/4Fq9"' in mail.get_body(("html",)).get_content()  # type: ignore[union-attr]


@pytest.mark.parametrize("url", ["http://sign.northwind.example/s/x", "/s/x", "sign.northwind.example/s/x",
                                 "javascript:alert(1)", "ftp://sign.northwind.example/s"])
def test_a_link_that_is_not_absolute_https_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="absolute https"):
        request(MailKind.INVITATION, link_url=url)


def test_plain_http_links_are_accepted_on_this_host_only_for_the_demo() -> None:
    assert request(MailKind.INVITATION, link_url="http://127.0.0.1:8443/s/x").link_url


def test_the_code_mail_shows_the_code_and_its_validity() -> None:
    mail = wire(compose(request(MailKind.CODE, "de"), SENDER))
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "480213" in text and "10 Minuten" in text
    assert "480213" not in str(mail["Subject"])  # a lock screen shows subjects
    assert "480213" not in repr(request(MailKind.CODE))


def test_the_refusal_names_who_declined_and_why() -> None:
    text = wire(compose(request(MailKind.REFUSED), SENDER)).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Jürgen Groß declined" in text and "Preis zu hoch" in text


@pytest.mark.parametrize(("kind", "missing"), [(MailKind.INVITATION, "link_url"), (MailKind.CODE, "code"),
                                               (MailKind.REFUSED, "reason"), (MailKind.EXPIRED, "expires_on")])
def test_a_request_without_what_its_kind_needs_is_refused(kind: MailKind, missing: str) -> None:
    with pytest.raises(ValueError, match=f"needs {missing}"):
        request(kind, **{missing: None})


@pytest.mark.parametrize("change", [{"message_id": "no-brackets@x"}, {"language": "fr"},
                                    {"recipient": Party("Eve\r\nBcc: x@evil.example", "e@x.example")},
                                    {"document_title": "Quote\nBcc: x@evil.example"}])
def test_malformed_requests_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        request(MailKind.INVITATION, **change)


def test_the_same_request_gives_the_same_message_id() -> None:
    req = request(MailKind.INVITATION)
    first, second = compose(req, SENDER), compose(dataclasses.replace(req), SENDER)
    assert first["Message-ID"] == second["Message-ID"] == req.message_id


def test_an_address_with_a_non_ascii_local_part_is_refused_before_it_is_queued() -> None:
    with pytest.raises(ValueError, match="non-ASCII characters before the @"):
        request(MailKind.INVITATION, recipient=Party("Jürgen", "jürgen@kunde.example"))
    with pytest.raises(ValueError, match="one plain local@domain"):
        request(MailKind.INVITATION, recipient=Party("Two", "a@kunde.example, b@kunde.example"))
