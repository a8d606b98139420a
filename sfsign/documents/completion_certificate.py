"""The certificate of completion: a separate PDF/A-2b that lists an envelope, the document's SHA-256 before
and after signing, and every recipient event (time, IP, user agent, authentication method), sealed with
the organisation's key at B-T.

Why a separate document: the signed contract must not change after its last signature except for
validation data, and an audit trail that grows with every view and failed code does not belong in it. The
certificate binds itself to the contract by the hashes, and the seal makes it tamper-evident.
The input is plain dataclasses the worker fills from the envelope's timeline; rendering reuses the
contracts' Typst pipeline (fonts, U+FFFD fallback, PDF/A) with `templates/internal/completion.typ`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sfsign.documents.render import TEMPLATES_DIR, RenderError, compile_template
from sfsign.documents.specs import Appearance, KeySource, SignatureLevel, TsaAuth

if TYPE_CHECKING:
    from sfsign.documents.sign import SignedPdf

# Not beside the contract templates: a rule naming `template: completion` must not find it.
TEMPLATE = TEMPLATES_DIR / "internal" / "completion.typ"
SEAL_FIELD = "CompletionSeal"

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Certificate of completion", "envelope": "Envelope", "document": "Document",
        "transaction": "Transaction", "envelope-id": "Envelope", "sender": "Sent by", "status": "Status",
        "sent": "Sent", "completed": "Completed", "sha-before": "SHA-256 before signing",
        "sha-after": "SHA-256 after signing", "recipients": "Recipients", "step": "Step", "name": "Name",
        "email": "E-mail", "auth": "Authentication", "state": "State", "events": "Events", "time": "Time (UTC)",
        "event": "Event", "recipient": "Recipient", "ip": "IP address", "user-agent": "User agent", "page": "Page",
        "statement": "This certificate records the signing of the document identified above, as logged by the "
                     "sender's signing service. It is sealed with the sender's signing key.",
    },
    "de": {
        "title": "Abschlusszertifikat", "envelope": "Umschlag", "document": "Dokument",
        "transaction": "Vorgang", "envelope-id": "Umschlag", "sender": "Gesendet von", "status": "Status",
        "sent": "Gesendet", "completed": "Abgeschlossen", "sha-before": "SHA-256 vor der Signatur",
        "sha-after": "SHA-256 nach der Signatur", "recipients": "Empfänger", "step": "Schritt", "name": "Name",
        "email": "E-Mail", "auth": "Authentifizierung", "state": "Stand", "events": "Ereignisse",
        "time": "Zeit (UTC)", "event": "Ereignis", "recipient": "Empfänger", "ip": "IP-Adresse",
        "user-agent": "Browser", "page": "Seite",
        "statement": "Dieses Zertifikat dokumentiert die Signatur des oben genannten Dokuments, wie sie der "
                     "Signaturdienst des Absenders protokolliert hat. Es ist mit dem Schlüssel des Absenders "
                     "versiegelt.",
    },
}


@dataclasses.dataclass(frozen=True)
class RecipientSummary:
    step: int
    name: str
    email: str
    auth_method: str  # an AuthMethod value
    state: str  # a RecipientState value


@dataclasses.dataclass(frozen=True)
class RecipientEvent:
    """One line of the timeline. `event` is the timeline's event name (sent, viewed, code_failed, signed...)."""

    at: dt.datetime  # aware
    event: str
    recipient: str  # name and e-mail as the reader should see them, or "" for an envelope event
    ip: str = ""
    user_agent: str = ""
    auth_method: str = ""
    detail: str = ""  # e.g. a decline reason or a void reason


@dataclasses.dataclass(frozen=True)
class CompletionCertificate:
    organisation: str
    transaction_id: str
    envelope_id: str
    document_title: str
    sender: str  # who sent the envelope, e.g. "Katrin Albers <k.albers@nordlicht.example>"
    status: str  # the envelope's final state
    sent_at: dt.datetime
    completed_at: dt.datetime
    sha256_before: str  # of the document as sent (sealed or not)
    sha256_after: str  # of the document after the last signature (before long-term validation data)
    recipients: tuple[RecipientSummary, ...]
    events: tuple[RecipientEvent, ...]
    language: str = "en"


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def template_data(cert: CompletionCertificate) -> dict[str, Any]:
    """What completion.typ receives: every value a display string, events in time order."""
    lang = cert.language if cert.language in LABELS else "en"
    return {
        "lang": lang,
        "labels": LABELS[lang],
        "organisation": cert.organisation,
        "transaction_id": cert.transaction_id,
        "envelope_id": cert.envelope_id,
        "document_title": cert.document_title,
        "sender": cert.sender,
        "status": cert.status,
        "sent_at": _utc(cert.sent_at) + " UTC",
        "completed_at": _utc(cert.completed_at) + " UTC",
        "sha256_before": cert.sha256_before,
        "sha256_after": cert.sha256_after,
        "recipients": [{**dataclasses.asdict(r), "step": str(r.step)} for r in cert.recipients],
        "events": [{**dataclasses.asdict(e), "at": _utc(e.at)} for e in sorted(cert.events, key=lambda e: e.at)],
    }


def render_certificate(cert: CompletionCertificate, timestamp: dt.datetime | None = None) -> tuple[bytes, Any]:
    """The unsigned PDF/A-2b and the box its seal goes on."""
    pdf, boxes, _warnings, _notes = compile_template(TEMPLATE, template_data(cert), timestamp=timestamp)
    if "seller" not in boxes:
        raise RenderError(str(TEMPLATE), "the certificate template marks no seal box")
    return pdf, boxes["seller"]


def sealed_certificate(
    cert: CompletionCertificate, key: KeySource, *, tsa_urls: Sequence[str], tsa_auth: TsaAuth | None = None
) -> SignedPdf:
    """Render and seal the certificate at B-T. Pool-safe: picklable arguments and result."""
    from sfsign.documents.sign import sign_pdf_bytes  # in the pool process, where pyHanko is loaded

    pdf, box = render_certificate(cert, timestamp=cert.completed_at)
    appearance = Appearance(name=cert.organisation, reason=f"Certificate of completion {cert.transaction_id}")
    return sign_pdf_bytes(pdf, box, key, appearance, level=SignatureLevel.B_T, tsa_urls=tsa_urls, tsa_auth=tsa_auth,
                          field_name=SEAL_FIELD)
