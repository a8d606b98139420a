"""Entry points the worker runs in its process pool: plain functions with picklable arguments.

They keep the pool boundary narrow: JSON and bytes go in, bytes and small records come out, and
every failure a person must fix becomes one picklable `DocumentFailure` with a readable message.
Keys are parsed once per pool process (cached in `sign.load_signer`), not once per document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sfsign.documents.model import sample_contract
from sfsign.documents.render import RenderError, SignatureBox, render_pdf
from sfsign.documents.sign import (
    CUSTOMER_FIELD,
    Appearance,
    KeySpec,
    SignatureLevel,
    SigningError,
    sign_pdf_bytes,
)


class DocumentFailure(Exception):
    """Rendering or signing failed for a reason retrying cannot fix (template, data, key)."""


@dataclass(frozen=True)
class SigningRequest:
    key: KeySpec
    appearance: Appearance
    level: SignatureLevel = SignatureLevel.B_B


@dataclass(frozen=True)
class SignedResult:
    pdf: bytes
    sha256: str
    level: str
    signer_subject: str
    signer_serial: str
    signed_at: str  # ISO 8601 UTC, as Salesforce's datetime fields want it


def warm_up(templates: tuple[str, ...] = ("proposal", "quote")) -> list[str]:
    """Run once in each pool process at start, so the first real document does not pay for loading
    Typst, its fonts and each template's compiler (about 140 ms per template and process).

    Returns the templates that fail on sample data: worth a warning at start, but not fatal, since
    a template may only fail for some records (those then get `Error` with the reason)."""
    problems = []
    for template in templates:
        try:
            render_pdf(sample_contract(kind="quote", line_count=1), template)
        except RenderError as exc:
            problems.append(str(exc))
    return problems


def render_job(document_json: str, template: str) -> tuple[bytes, dict[str, Any]]:
    """Render one document; return the PDF and its signature boxes (plain dicts, kept beside the PDF)."""
    try:
        rendered = render_pdf(json.loads(document_json), template)
    except RenderError as exc:
        raise DocumentFailure(f"could not render the document: {exc}") from None
    boxes = {
        "seller": rendered.signature_box.model_dump(),
        "customer": rendered.customer_box.model_dump() if rendered.customer_box else None,
    }
    return rendered.pdf, boxes


def sign_job(pdf: bytes, boxes: dict[str, Any], request: SigningRequest) -> SignedResult:
    """Sign one rendered document on the seller's box.

    The customer's box becomes an empty signature field *before* the seller signs: a field added
    after the first signature would invalidate it (signing-notes pitfall 7).
    """
    customer = boxes.get("customer")
    empty = ((CUSTOMER_FIELD, SignatureBox.model_validate(customer)),) if customer else ()
    try:
        signed = sign_pdf_bytes(
            pdf,
            SignatureBox.model_validate(boxes["seller"]),
            request.key,
            request.appearance,
            level=request.level,
            empty_fields=empty,
        )
    except SigningError as exc:
        raise DocumentFailure(f"could not sign the document: {exc}") from None
    return SignedResult(
        pdf=signed.pdf,
        sha256=signed.sha256_hex,
        level=signed.level,
        signer_subject=signed.signer_subject,
        signer_serial=signed.signer_serial,
        signed_at=signed.signing_time.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    )
