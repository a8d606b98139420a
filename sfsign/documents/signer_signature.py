"""A signer's signature: an incremental PAdES signature in that signer's own, pre-created field, made with the
organisation's key on the signer's behalf.

Why this shape:
- The key is the org's (the profile's `KeySource`): the signer holds no certificate. What makes the
  signature theirs is the evidence it carries, in the visible stamp and in the signature dictionary:
  /Name (the signer), /ContactInfo (their e-mail), /Reason (how they were authenticated and from which IP:
  pyHanko's `PdfSignatureMetadata` has no custom entry, and /Prop_AuthType only knows PIN, password and
  fingerprint, none of which an e-mail code is), /Prop_AuthTime (seconds between proving who they are
  and signing) and /M (when they pressed "Sign"; the B-T timestamp token proves when the signature existed).
- Only an existing, empty field is signed. A field added after an earlier signature would invalidate it
  (signing-notes pitfall 7), so every field is created up front: by the seal (`jobs.sign_job`, seal first)
  or by `add_signature_fields` before the first signer (seal after the last signature).
- Signing a field twice is refused with `FieldAlreadySigned`, so a retried job, a double click or a
  re-posted form cannot add a second signature; the worker treats it as "already applied".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from io import BytesIO
from typing import Any

from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields

from sfsign.documents.errors import FieldAlreadySigned as FieldAlreadySigned
from sfsign.documents.errors import SigningError
from sfsign.documents.errors import UnknownSignatureField as UnknownSignatureField
from sfsign.documents.render import SignatureBox
from sfsign.documents.sign import (
    KeySource,
    MetadataPreservingWriter,
    SignatureLevel,
    SignedPdf,
    TsaAuth,
    customer_field,
    field_rect,
    sign_pdf_bytes,
)
from sfsign.documents.specs import STATEMENTS as STATEMENTS
from sfsign.documents.specs import SignerEvidence as SignerEvidence

#: A claimed signing time may lie this far ahead of our clock (the web listener's and the pool's clocks).
_CLOCK_SKEW = dt.timedelta(seconds=30)


def signature_fields(pdf: bytes) -> dict[str, bool]:
    """Every signature field of `pdf` by name, with whether it is signed."""
    try:
        reader = PdfFileReader(BytesIO(pdf))
        return {str(name): value is not None for name, value, _ in fields.enumerate_sig_fields(reader)}
    except Exception as exc:  # pyHanko raises several types for unreadable input
        raise SigningError(f"input is not a readable PDF: {exc}") from None


def _field_box(pdf: bytes, field_name: str) -> SignatureBox:
    """Where an existing field's widget sits (page and /Rect), so the stamp fills exactly that box."""
    reader = PdfFileReader(BytesIO(pdf))
    for name, _value, ref in fields.enumerate_sig_fields(reader):
        if str(name) != field_name:
            continue
        widget: Any = ref.get_object()
        if "/Rect" not in widget and "/Kids" in widget:
            widget = widget["/Kids"][0].get_object()
        x1, y1, x2, y2 = (float(v) for v in widget["/Rect"])
        page_id = widget.get_value_as_reference("/P").idnum
        pages = range(int(reader.root["/Pages"]["/Count"]))
        page = next((i for i in pages if reader.find_page_for_modification(i)[0].idnum == page_id), 0)
        return SignatureBox(page=page, x1=x1, y1=y1, x2=x2, y2=y2)
    raise UnknownSignatureField(f"the document has no signature field {field_name!r}")


def customer_fields(boxes: Mapping[str, Any]) -> tuple[tuple[str, SignatureBox], ...]:
    """The signers' empty fields to create with the seal, from `jobs.render_job`'s boxes (older job
    records carry only "customer")."""
    customers = boxes.get("customers") or ([boxes["customer"]] if boxes.get("customer") else [])
    return tuple((customer_field(i), SignatureBox.model_validate(b)) for i, b in enumerate(customers))


def add_signature_fields(pdf: bytes, empty_fields: Sequence[tuple[str, SignatureBox]]) -> bytes:
    """`pdf` with these empty signature fields added as one incremental update (before any signature:
    the seal-after order's first step). Fields that exist already are left alone, so a retry is harmless."""
    existing = signature_fields(pdf)
    if any(existing.values()):
        raise SigningError("the document is signed already; fields added now would invalidate its signatures")
    missing = [(name, box) for name, box in empty_fields if name not in existing]
    if not missing:
        return pdf
    writer = MetadataPreservingWriter(BytesIO(pdf))
    for name, box in missing:
        fields.append_signature_field(writer, fields.SigFieldSpec(name, on_page=box.page, box=field_rect(box)))
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def sign_for_signer(
    pdf: bytes,
    field_name: str,
    key: KeySource,
    evidence: SignerEvidence,
    *,
    tsa_urls: Sequence[str],
    tsa_auth: TsaAuth | None = None,
) -> SignedPdf:
    """Sign `field_name` for the person in `evidence` at B-T. Pool-safe (picklable in and out).

    Raises `FieldAlreadySigned` when the field is signed, `UnknownSignatureField` when it does not exist,
    `TimestampUnavailable` when no TSA answered (retry later), `SigningError` for anything else.
    """
    signed_fields = signature_fields(pdf)
    if signed_fields.get(field_name):
        raise FieldAlreadySigned(f"signature field {field_name!r} is signed already")
    if field_name not in signed_fields:
        raise UnknownSignatureField(f"the document has no signature field {field_name!r}")
    if evidence.signed_at.tzinfo is None:
        raise SigningError("the signer's signing time must be timezone-aware")
    if evidence.signed_at > dt.datetime.now(dt.UTC) + _CLOCK_SKEW:
        raise SigningError(f"the signer's signing time {evidence.signed_at.isoformat()} is in the future")
    return sign_pdf_bytes(
        pdf,
        _field_box(pdf, field_name),
        key,
        evidence.appearance(),
        level=SignatureLevel.B_T,
        tsa_urls=tsa_urls,
        tsa_auth=tsa_auth,
        field_name=field_name,
        signing_time=evidence.signed_at,
        auth_seconds=evidence.auth_seconds(),
    )
